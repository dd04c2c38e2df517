"""Evaluation: the loss over a whole split, and the loss by position through the generation path."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast_for


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, batch_size: int = 64) -> tuple[float, int]:
    """Mean loss in nats per token over every token of `tokens` (after the first),
    read as consecutive non-overlapping windows of the model's context; and the count."""
    model.eval()
    device = model.tok_embeddings.weight.device
    context = model.config.context
    n_windows = math.ceil((len(tokens) - 1) / context)
    # Pad to whole windows with -1: padded targets are ignored, and padded inputs (read as 0)
    # come after the last real target, so causality keeps them from touching any scored position.
    padded = torch.full((n_windows * context + 1,), -1, dtype=torch.int64)
    padded[: len(tokens)] = torch.from_numpy(tokens.astype(np.int64))
    inputs = padded[:-1].clamp(min=0).view(n_windows, context)
    targets = padded[1:].view(n_windows, context)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for first in range(0, n_windows, batch_size):
        x, y = inputs[first : first + batch_size], targets[first : first + batch_size]
        with autocast_for(device):
            logits = model(x.to(device))
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-1, reduction="sum")
    model.train()
    return total.item() / (len(tokens) - 1), len(tokens) - 1


