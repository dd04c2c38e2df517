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
    # does. Drawn in the sorted order, then mapped back: fewer operations than scattering back first.
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    drop = cumulative - sorted_probs >= options.top_p * cumulative[:, -1:]
    drop[:, 0] = False  # the likeliest token always stays, even when top_p * total underflows to 0
    return order.gather(-1, draw(sorted_probs.masked_fill_(drop, 0.0), generator)[:, None]).squeeze(-1)


def draw(weights: torch.Tensor, generator) -> torch.Tensor:
    """One index per row of `weights` (B, V), with probability proportional to its weight.

    The exponential race: argmax of weight / E with E ~ Exp(1) independent per entry, which is
    what torch.multinomial computes for one sample, without its input checks, which cost more
    than the draw for a small vocabulary. E is kept away from 0 so that a zero weight never wins.

    `generator` is one generator for the whole batch, or a list of one per row (a server's rows
    belong to different requests): each row then draws exactly what it would draw alone."""
    if isinstance(generator, (list, tuple)):
        noise = torch.empty_like(weights)
        # in place, row by row: the numbers a row draws alone (as many, contiguous), without a cat
        for row, row_generator in zip(noise.unbind(0), generator):
            row.exponential_(generator=row_generator)
    else:
        noise = torch.empty_like(weights).exponential_(generator=generator)
    noise = noise.clamp_min_(torch.finfo(weights.dtype).tiny)
    return (weights / noise).argmax(dim=-1)
