"""Evaluation: the loss over a whole split, and the loss by position through the generation path."""

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .decode import DecodeBatch, Decoder
from .device import autocast_for, device_of
from .errors import BluError

EVAL_TOKENS = 16_384  # positions per forward: 64 windows of 256, the most a small run evaluates at once
HEAD_SLICE = 2_048  # positions whose logits exist at once (2,048 x 49,152 x 4 bytes = 0.4 GB)


class Scores(NamedTuple):
    """What an evaluation measures over a whole text."""

    loss: float  # nats per target token (every token after the first is a target once)
    tokens: int  # targets scored
    bytes: int | None  # UTF-8 bytes of text those targets stand for (the end-of-text token: none)
    bpb: float | None  # bits per byte: the loss of the targets that stand for text, over their bytes

    @property
    def bpc(self) -> float:
        """Bits per token, which is bits per character for a char tokenizer only: reported for char runs alone."""
        return self.loss / math.log(2)


def scored_tokens(tokens) -> int:
    """How many tokens of a text an evaluation scores: every one after the first is predicted once.
    The count the training header, `blu prepare` and `blu eval` all give."""
    return max(0, len(tokens) - 1)


def evaluate(model, tokens: np.ndarray, batch_size: int = 64, byte_lengths: np.ndarray | None = None) -> Scores:
    """The loss over every token of `tokens` (after the first), read as consecutive
    non-overlapping windows of the model's context, and, given `byte_lengths` (the bytes each
    token stands for, from the tokenizer), bits per byte: comparable across tokenizers. The model
    is scored in eval mode and left in the mode it was in, even if interrupted."""
    was_training = model.training
    model.eval()
    try:
        return _scores(model, tokens, batch_size, byte_lengths)
    finally:
        model.train(was_training)


@torch.no_grad()
def _scores(model, tokens: np.ndarray, batch_size: int, byte_lengths: np.ndarray | None) -> Scores:
    device = device_of(model)
    context = model.config.context
    n_windows = math.ceil((len(tokens) - 1) / context)
    # Pad to whole windows with -1: padded targets are ignored, and padded inputs (read as 0)
    # come after the last real target, so causality keeps them from touching any scored position.
    padded = torch.full((n_windows * context + 1,), -1, dtype=torch.int64)
    padded[: len(tokens)] = torch.from_numpy(tokens.astype(np.int64))
    inputs = padded[:-1].clamp(min=0).view(n_windows, context)
    targets = padded[1:].view(n_windows, context)
    lengths = torch.zeros(n_windows * context, dtype=torch.int64)  # bytes of each target (padding: 0)
    if byte_lengths is not None:
        lengths[: len(tokens) - 1] = torch.from_numpy(np.asarray(byte_lengths[1:], dtype=np.int64))
    lengths = lengths.view(n_windows, context)
    total = torch.zeros((), device=device, dtype=torch.float64)
    of_text = torch.zeros((), device=device, dtype=torch.float64)  # the loss of targets that stand for bytes
    # At most EVAL_TOKENS positions per forward, and the head's logits a slice of them at a time:
    # 64 windows of an imported model's 2,048 positions would be 25 GB of logits.
    batch_size = max(1, min(batch_size, EVAL_TOKENS // context))
    for first in range(0, n_windows, batch_size):
        x, y = inputs[first : first + batch_size], targets[first : first + batch_size]
        with autocast_for(device):
            features = model.features(x.to(device)).flatten(0, 1)
        y, scored = y.to(device).flatten(), lengths[first : first + batch_size].flatten().to(device) > 0
        for at in range(0, len(y), HEAD_SLICE):
            with autocast_for(device):
                logits = model.output(features[at : at + HEAD_SLICE])
            losses = F.cross_entropy(logits.float(), y[at : at + HEAD_SLICE], ignore_index=-1, reduction="none")
            losses = losses.double()  # summed in float64, so that both sums agree where every target has bytes
            total += losses.sum()
            of_text += losses[scored[at : at + HEAD_SLICE]].sum()
    count = scored_tokens(tokens)
    if byte_lengths is None:
        return Scores(total.item() / count, count, None, None)
    n_bytes = int(lengths.sum())
    return Scores(total.item() / count, count, n_bytes, of_text.item() / math.log(2) / n_bytes if n_bytes else float("nan"))


def evaluate_shared(model, tokens: np.ndarray, byte_lengths: np.ndarray, batch_size: int, world) -> tuple[float, float]:
    """evaluate's loss and bits per byte, computed by the ranks of `world` (a distributed.World)
    together: each scores a contiguous share of the windows (the windows one process reads), and
    the sums are added. On one process, evaluate itself."""
    if not world.distributed:
        scores = evaluate(model, tokens, batch_size, byte_lengths)
        return scores.loss, scores.bpb
    context, device = model.config.context, device_of(model)
    n_windows = math.ceil(scored_tokens(tokens) / context)
    first, end = n_windows * world.rank // world.size, n_windows * (world.rank + 1) // world.size
    share = slice(first * context, end * context + 1)  # the windows' inputs and their last target
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, loss of the text's bytes in bits, bytes
    if end > first:
        s = evaluate(model, tokens[share], batch_size, byte_lengths[share])
        sums += torch.tensor([s.loss * s.tokens, (s.bpb or 0.0) * s.bytes, s.bytes], dtype=torch.float64, device=device)
    loss, bits, n_bytes = world.sum(sums).tolist()
    return loss / scored_tokens(tokens), bits / n_bytes if n_bytes else float("nan")


@torch.inference_mode()
def stream_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher forcing through the generation loop: the loss (B, L-1) of each token of
    `tokens` (B, L) given everything before it, as generation would have computed it."""
    batch = DecodeBatch(Decoder(model), capacity=tokens.shape[0])
    logits = batch.add(tokens[:, :1])
    losses = []
    for t in range(1, tokens.shape[1]):
        losses.append(F.cross_entropy(logits.float(), tokens[:, t], reduction="none"))
        if t + 1 < tokens.shape[1]:
            logits = batch.step(tokens[:, t])
    return torch.stack(losses, dim=1)


def position_buckets(context: int, span: int) -> list[tuple[int, int]]:
    """[from, to) ranges of stream position: the two halves of the context, then doublings to span x context."""
    half = max(1, context // 2)
    buckets, start = [(1, half), (half, context)], context
    while start < span * context:
        buckets.append((start, min(2 * start, span * context)))
        start *= 2
    return buckets


def stream_eval(model, tokens, span: int = 8, batch_size: int = 64) -> list[dict]:
    """Mean loss by position bucket over consecutive segments of `span` contexts of `tokens`
    (a 1-D numpy array), computed through the generation loop: does text stay as good past the context?"""
    length = span * model.config.context + 1
    n_segments = len(tokens) // length
    if n_segments == 0:
        raise BluError(f"stream evaluation needs at least {length} tokens, the text has {len(tokens)}")
    data = torch.from_numpy(tokens[: n_segments * length].astype("int64")).view(n_segments, length)
    losses = torch.cat([stream_losses(model, data[i : i + batch_size].to(device_of(model))).cpu()
                        for i in range(0, n_segments, batch_size)])  # (segments, length - 1); column t predicts token t + 1
    rows = []
    for start, end in position_buckets(model.config.context, span):
        piece = losses[:, start - 1 : end - 1]
        # The standard error tells a real difference between buckets from the variety of the text in them.
        rows.append({"from": start, "to": end, "loss": piece.mean().item(), "tokens": piece.numel(),
                     "stderr": (piece.var() / piece.numel()).sqrt().item()})
    return rows
