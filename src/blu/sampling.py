"""Sampling: the next token from the model's logits under temperature, top-k, top-p,
min-p and a repetition penalty, drawn with an explicit `torch.Generator`.

Everything runs in float32, which every device blu offers has (MPS has no float64)."""

import torch

from .config import SamplingOptions


def penalize_repetition(logits, recent, penalty: float):
    """Divide positive logits (multiply negative ones) of tokens in `recent` (B, W) by `penalty`,
    as in CTRL and transformers' RepetitionPenaltyLogitsProcessor."""
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, recent, True)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty).clamp(-1e30, 1e30)  # extreme penalties stay finite
    return torch.where(seen, penalized, logits)


def inverse_temperature(temperature: float, dtype) -> float:
    """1 / temperature, capped so that it stays finite in `dtype`: any positive Python float is
    a valid temperature, and a tiny one then only sharpens the distribution as far as it can go."""
    largest = torch.finfo(dtype).max / 2
    return min(1.0 / max(temperature, 1.0 / largest), largest)


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | list | None,
           recent: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab); `recent` (B, W) are the last tokens, for the repetition
    penalty; `generator`: one for the batch or one per row (see `draw`)."""
    if options.repetition_penalty != 1 and recent is not None:
        logits = penalize_repetition(logits, recent[:, -options.repetition_window :], options.repetition_penalty)
    if options.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # From the maximum down (the likeliest token scores 0), so that scaling can reach -inf but never inf - inf.
    logits = (logits - logits.max(dim=-1, keepdim=True).values) * inverse_temperature(options.temperature, logits.dtype)
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if options.min_p:
        probs = probs.masked_fill(probs < options.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if options.top_p == 1:
        return draw(probs, generator)
    # Keep the smallest set whose mass reaches top_p: drop a token when the mass before it already
    # does. Drawn in the descending order, then mapped back: fewer operations than scattering back.
    values, ids, cumulative, total = nucleus_candidates(probs, options.top_p)
    drop = cumulative - values >= options.top_p * total
    drop[:, 0] = False  # the likeliest token always stays, even when top_p * total underflows to 0
    return ids.gather(-1, draw(values.masked_fill_(drop, 0.0), generator)[:, None]).squeeze(-1)


def nucleus_candidates(probs: torch.Tensor, top_p: float, first: int = 256):
    """The largest probabilities of each row in descending order, their ids and running sum, as
    many as hold every row's top-p set; and each row's total (B, 1).

    A full sort of a 49,152-token vocabulary is 3.4 ms a row on the 2-core CPU, a top-256 0.1 ms
    (BENCHMARKS.md), and a trained model's set is mostly far smaller than its vocabulary: so the
    top `first`, then 16 times more, are tried before the sort. The set is the same: the k largest
    hold it when their sum already reaches top_p of the whole."""
    vocab = probs.shape[-1]
    total = probs.sum(dim=-1, keepdim=True)
    k = min(first, vocab)
    while k < vocab:
        values, ids = torch.topk(probs, k, dim=-1)
        cumulative = values.cumsum(dim=-1)
        if bool((cumulative[:, -1:] >= top_p * total).all()):
            return values, ids, cumulative, total
        k = min(k * 16, vocab)
    values, ids = probs.sort(dim=-1, descending=True)
    cumulative = values.cumsum(dim=-1)
    return values, ids, cumulative, cumulative[:, -1:]


def draw(weights: torch.Tensor, generator) -> torch.Tensor:
    """One index per row of `weights` (B, V), with probability proportional to its weight.

    By the inverse of the running sum: one uniform number u per row, and the first index whose
    running sum exceeds u times the row's total. A zero weight adds nothing to the sum, so it is
    never the first to exceed; u * total rounding up to the total is caught by the last clamp.
    One number a row: an exponential race (argmax of weight / E, E ~ Exp(1) per entry) drew one
    per entry, 0.95 ms a row for a 49,152-token vocabulary.

    `generator` is one generator for the whole batch, or a list of one per row (a server's rows
    belong to different requests): each row then draws exactly what it would draw alone."""
    rows = weights.shape[0]
    if isinstance(generator, (list, tuple)):
        u = torch.empty((rows, 1), dtype=weights.dtype, device=weights.device)
        for row, row_generator in zip(u.unbind(0), generator):  # in place: no cat of one-row tensors
            row.uniform_(generator=row_generator)
    else:
        u = torch.rand((rows, 1), dtype=weights.dtype, device=weights.device, generator=generator)
    cumulative = weights.cumsum(dim=-1)
    total = cumulative[:, -1:]
    index = torch.searchsorted(cumulative, u * total, right=True)
    # the first index that reaches the total has a positive weight: the most u * total can pick
    return torch.minimum(index, (cumulative < total).sum(dim=-1, keepdim=True)).squeeze(-1)
