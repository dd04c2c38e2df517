"""The decoder's weights: the model's matrices folded and laid out for the fewest operations
and the fastest reads at batch 1 (`decode.py` runs them). Each trick is a named piece:

- `fold_weights`: each RMSNorm gain is folded into the matrix after it and the
  attention scale into the query rows, so a norm is three operations and no
  multiplication by a gain; the residual adds ride on the products (`product`'s `add`).
- `rotary_pair_order` and `rotary_turns`: the rotary embedding is one complex
  product. The query and key rows of each head are reordered so that the pair it
  turns together, (i, i + head_dim/2) in Hugging Face's layout, is the real and
  imaginary part of one complex number; values are "turned" by 1, so keys and
  values pass through one product whose output is the cache itself.
- `first_layer_table`: the first layer's queries, keys and values depend on the
  token alone, so they are looked up by token id (when that table is no larger
  than the matrix it replaces).
- `column_blocks`: a large matrix is split in column blocks that a batched product
  shares over the threads (one row's product by one matrix runs on one core) and
  that one core also reads faster than one product when they are 32 columns wide.
"""

import math
from typing import NamedTuple

import torch

from .config import ModelConfig
from .model import rope_angles


class FoldedLayer(NamedTuple):
    """One block's matrices, (in, out) and contiguous, for `x @ w` by mm and addmm (F.linear in fewer
    calls); so stored, a row's product reads memory in order (1.4x at batch 1 for 135M, BENCHMARKS.md).
    A large matrix may be split in column blocks instead (see `column_blocks`)."""

    qkv: torch.Tensor  # attention norm gain folded in, queries scaled by 1/sqrt(head_dim), rows in rotary-pair order
    o: torch.Tensor
    gate_up: torch.Tensor  # feed-forward norm gain folded in
    down: torch.Tensor


class FoldedWeights(NamedTuple):
    embedding: torch.Tensor  # (vocab, dim)
    layers: list[FoldedLayer]
    head: torch.Tensor  # (dim, vocab), the final norm gain folded in
    first_qkv: torch.Tensor | None  # (vocab, q|k|v): the first layer's projections of each token, or None


def column_blocks(matrix: torch.Tensor) -> torch.Tensor:
    """An (in, out) matrix as (blocks, in, out / blocks) contiguous column blocks where that reads it
    faster at batch 1, else as it is. torch's one-row mm runs on one core at 11 to 24 GB/s by shape;
    bmm shares its batch over the threads: 22 to 30 against 17 GB/s over 135M's matrices on 2 cores
    (benchmarks/matvec_bandwidth.py). Wide outputs split one block per thread, narrow ones in
    blocks 32 columns wide, which one core also reads faster than one mm (measured best; with one
    thread "wide" starts higher and the head stays whole); small matrices are bound by each call's
    cost: kept."""
    rows, cols = matrix.shape
    threads = torch.get_num_threads()
    blocks = threads if cols >= (2048 if threads > 1 else 4096) else cols // 32
    if rows * cols < 1 << 18 or blocks < 2 or cols % blocks or matrix.device.type != "cpu":
        return matrix
    return matrix.view(rows, blocks, cols // blocks).transpose(0, 1).contiguous()


def product(x: torch.Tensor, w: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """`add + x @ w` (or `x @ w`) for rows x (N, in) and w as `column_blocks` made it."""
    if w.dim() == 2:
        return torch.mm(x, w) if add is None else torch.addmm(add, x, w)
    blocks, n = w.shape[0], x.shape[0]
    if n == 1 and add is not None:
        return torch.baddbmm(add.view(blocks, 1, -1), x.expand(blocks, 1, -1), w).view(1, -1)
    y = torch.bmm(x.expand(blocks, n, -1), w)  # (blocks, n, out / blocks)
    y = y.view(1, -1) if n == 1 else y.transpose(0, 1).reshape(n, -1)
    return y if add is None else add + y


def rms_normalize(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a gain, for rows x (N, dim), in three operations: x . x / dim + eps
    in one product (F.rms_norm takes several more, each with its fixed cost). `eps` is a
    (1, 1, 1) tensor so that it rides on the product too."""
    # one row: x @ x.T is its (1, 1) mean square, cheaper than a batched product (batch-1 generation 5%
    # faster with it: 1,752 against 1,673 tokens/s, benchmarks/decode_paths.py, best rounds, 2026-11-30)
    if x.shape[0] == 1:
        return x * torch.addmm(eps.view(1, 1), x, x.t(), alpha=1 / x.shape[-1]).rsqrt_()
    mean_square = torch.baddbmm(eps, x[:, None], x[:, :, None], alpha=1 / x.shape[-1])  # (N, 1, 1)
    return x * mean_square.view(-1, 1).rsqrt_()


def rotary_pair_order(config: ModelConfig) -> torch.Tensor:
    """Row indices of q|k|v that put the two halves of each rotated pair side by side
    (0, h, 1, h+1, ... within each query and key head); value rows keep their order."""
    half, rotated = config.head_dim // 2, config.n_head + config.n_kv_head
    pairs = torch.stack((torch.arange(half), torch.arange(half, config.head_dim)), dim=1).flatten()
    values = torch.arange(rotated * config.head_dim, (rotated + config.n_kv_head) * config.head_dim)
    return torch.cat([pairs + h * config.head_dim for h in range(rotated)] + [values])


def rotary_turns(config: ModelConfig) -> torch.Tensor:
    """e^(i angle) for each position and pair, (context, head_dim/2) complex: multiplying a
    pair written as a complex number by it is the rotary embedding."""
    angles = rope_angles(config)
    return torch.polar(torch.ones_like(angles), angles)


@torch.no_grad()
def fold_weights(model, first_layer_table: bool | None = None) -> FoldedWeights:
    """The model's weights with the norm gains and the attention scale folded in (see the
    module docstring). `first_layer_table`: None = where the table is no larger than the
    first layer's q|k|v matrix (vocabulary <= dim)."""
    c = model.config
    order = rotary_pair_order(c).to(model.tok_embeddings.weight.device)
    layers = []
    for block in model.layers:
        qkv = block.attention.qkv_proj.weight * block.attention_norm.weight
        qkv[: c.n_head * c.head_dim] /= math.sqrt(c.head_dim)
        gate_up = block.feed_forward.gate_up_proj.weight * block.ffn_norm.weight
        layers.append(FoldedLayer(*(column_blocks(m.t().contiguous()) for m in (
            qkv[order], block.attention.o_proj.weight, gate_up, block.feed_forward.down_proj.weight))))
    embedding = model.tok_embeddings.weight
    first_qkv = None
    # The table pays: 1,752 against 1,517 tokens/s at batch 1 without it (benchmarks/decode_paths.py, best rounds).
    if first_layer_table or (first_layer_table is None and c.vocab_size <= c.dim):
        eps = embedding.new_full((1, 1, 1), c.norm_eps)
        first_qkv = product(rms_normalize(embedding, eps), layers[0].qkv)
    head = column_blocks((model.output.weight * model.norm.weight).t().contiguous())
    return FoldedWeights(embedding, layers, head, first_qkv)
