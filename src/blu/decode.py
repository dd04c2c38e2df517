"""The fast forward of generation: a KV cache and the model's forward computed
incrementally in fewer tensor operations, checked against model.py by the tests.

Token-by-token generation on a CPU is bound by the fixed cost of each tensor
operation for small models and by reading the weights for large ones
(BENCHMARKS.md), so `Decoder` computes the model's function with as few
operations as it can, on weights folded and laid out for it (`fold.py`: the
norm gains and the attention scale folded in, the rotary embedding as one
complex product, the first layer as a table, large matrices in column blocks).

Rows of one batch may stand at different positions (a server's requests come
and go): `Decoder.prefill` fills some rows from position 0 while the others keep
their cache, and `Decoder.step` adds one token to every row at its own position.
When every row is at the same position (`blu generate`) the step takes a path
with no mask and no gathers.

The keys in the cache are in `fold.rotary_pair_order`'s row order (attention does
not care, since queries share it): fill a cache with a `Decoder` only. The folded
weights are a snapshot of the model's: build a `Decoder` per use of changing weights.
"""

from itertools import groupby

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .fold import fold_weights, product, rms_normalize, rotary_turns


class KVCache:
    """Keys and values of every layer for `rows` texts, preallocated once and indexed by
    position; each row has its own length.

    One tensor per layer holds both, keys then values along the head axis, so that a step
    whose projections come out as [k heads | v heads] writes both in one operation."""

    def __init__(self, config: ModelConfig, rows: int, device, dtype):
        self.context = config.context
        self.n_kv_head = config.n_kv_head
        self.kv = torch.zeros((config.n_layer, rows, 2 * config.n_kv_head, config.context, config.head_dim),
                              device=device, dtype=dtype)
        self.lengths = [0] * rows  # positions filled in each row, kept on the host: no device sync to read them
        self._views = {}

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def views(self, first: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each layer, rows first..first+count-1 as (k|v as complex numbers, which the step
        writes; k and v, which attention reads). Made once per row range: views cost per call."""
        key = (first, count)
        if key not in self._views:
            self._views[key] = [(torch.view_as_complex(layer.unflatten(-1, (-1, 2))),
                                 layer[:, : self.n_kv_head], layer[:, self.n_kv_head :])
                                for layer in self.kv[:, first : first + count]]
        return self._views[key]

    def reset(self, first: int = 0, count: int | None = None) -> None:
        """Forget rows first..first+count-1 (all rows by default)."""
        count = self.rows - first if count is None else count
        self.lengths[first : first + count] = [0] * count

    def advance(self, first: int, count: int, positions: int) -> None:
        """Mark `positions` more positions filled in rows first..first+count-1."""
        for row in range(first, first + count):
            self.lengths[row] += positions

    def move(self, source: int, target: int) -> None:
        """Copy row `source` (its keys, values and length) into row `target`."""
        self.kv[:, target].copy_(self.kv[:, source])
        self.lengths[target] = self.lengths[source]


class Decoder:
    """The model's logits for new tokens of rows whose earlier tokens are in a KVCache."""

    @torch.no_grad()
    def __init__(self, model, first_layer_table: bool | None = None):
        c = model.config
        self.config = c
        self.weights = fold_weights(model, first_layer_table)
        self.gqa = c.n_kv_head != c.n_head
        self.eps = self.weights.embedding.new_full((1, 1, 1), c.norm_eps)
        turns = rotary_turns(c).to(self.weights.embedding.device)  # (context, half)
        self.turn_q = turns.expand(c.n_head, -1, -1)  # (n_head, context, half)
        # Values are turned by 1, so keys and values go through one product into the cache.
        self.turn_kv = torch.cat((turns.expand(c.n_kv_head, -1, -1), torch.ones_like(turns).expand(c.n_kv_head, -1, -1)))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, cache: KVCache, first_row: int = 0) -> torch.Tensor:
        """Logits (R, vocab) after tokens (R, T), written into rows first_row..first_row+R-1 of
        the cache from position 0 (what those rows held is forgotten; other rows are kept)."""
        R, T = tokens.shape
        if T > self.config.context:
            raise ValueError(f"position {T - 1} exceeds the context of {self.config.context}")
        cache.reset(first_row, R)
        logits = self._forward(tokens, cache.views(first_row, R), 0)
        cache.advance(first_row, R, T)
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (n, vocab) after one more token (n,) for each of the first n rows of the
        cache, each at its own position."""
        n = tokens.shape[0]
        lengths = cache.lengths[:n]
        if max(lengths) >= self.config.context:
            raise ValueError(f"position {max(lengths)} exceeds the context of {self.config.context}")
        same = min(lengths) == max(lengths)
        positions = lengths[0] if same else torch.tensor(lengths, device=tokens.device)
        logits = self._forward(tokens.view(n, 1), cache.views(0, n), positions)
        cache.advance(0, n, 1)
        return logits

    def _forward(self, tokens, views, positions) -> torch.Tensor:
        """Logits after the last of tokens (B, T). `positions` is where they start: an int for
        all rows (T tokens at once only from 0), or a tensor (B,) of each row's position (T = 1)."""
        c, w = self.config, self.weights
        B, T = tokens.shape
        ids = tokens.reshape(-1)
        x = w.embedding[ids]  # (B*T, dim)
        if isinstance(positions, int):
            pos = positions
            turn_q, turn_kv = self.turn_q[:, pos : pos + T], self.turn_kv[:, pos : pos + T]  # (heads, T, half)
            attend = pos + T  # positions attention reads
        else:
            turn_q = self.turn_q[:, positions].transpose(0, 1)[:, :, None]  # (B, n_head, 1, half)
            turn_kv = self.turn_kv[:, positions].transpose(0, 1)  # (B, 2 n_kv_head, half)
            attend = int(positions.max()) + 1
            # Each row attends to its own positions only: (B, 1, 1, attend)
            mask = (torch.arange(attend, device=positions.device) <= positions[:, None]).view(B, 1, 1, attend)
            rows = torch.arange(B, device=positions.device)
        for layer, (weights, (kv, k, v)) in enumerate(zip(w.layers, views)):
            if layer == 0 and w.first_qkv is not None:
                qkv = w.first_qkv[ids]
            else:
                qkv = product(rms_normalize(x, self.eps), weights.qkv)
            qkv = qkv.view(B, T, -1, c.head_dim // 2, 2).transpose(1, 2)
            qkv = torch.view_as_complex(qkv)  # (B, heads, T, head_dim / 2)
            if isinstance(positions, int):
                # keys turned and values as they are, straight into the cache
                torch.mul(qkv[:, c.n_head :], turn_kv, out=kv.narrow(2, pos, T))
                q = torch.view_as_real(qkv[:, : c.n_head] * turn_q).view(B, c.n_head, T, c.head_dim)
                y = F.scaled_dot_product_attention(q, k.narrow(2, 0, attend), v.narrow(2, 0, attend),
                                                   is_causal=T > 1, scale=1.0, enable_gqa=self.gqa)
            else:
                kv[rows, :, positions] = qkv[:, c.n_head :, 0] * turn_kv
                q = torch.view_as_real(qkv[:, : c.n_head] * turn_q).view(B, c.n_head, 1, c.head_dim)
                y = F.scaled_dot_product_attention(q, k.narrow(2, 0, attend), v.narrow(2, 0, attend),
                                                   attn_mask=mask, scale=1.0, enable_gqa=self.gqa)
            x = product(y.transpose(1, 2).reshape(B * T, -1), weights.o, add=x)  # y: (B, n_head, T, head_dim)
            gate, up = product(rms_normalize(x, self.eps), weights.gate_up).chunk(2, dim=-1)
            x = product(F.silu(gate) * up, weights.down, add=x)
        return product(rms_normalize(x.view(B, T, -1)[:, -1], self.eps), w.head)


class DecodeBatch:
    """Rows of text continued together: each row's recent tokens, its cache row and the
    rule past the context.

    Past the context. The model was trained on windows of `context` tokens that start from
    nothing, so it must never see a position beyond `context - 1`, nor a window whose first
    token carries history from before it. When a row's cache is full, its last
    `context // 2` tokens are therefore re-encoded from position 0 and it carries on. Every
    token is then predicted from between context/2 and context tokens of real history,
    exactly the situation of the second half of a training window. Each row refills at its
    own time; the cost is a forward over context/2 tokens every context/2 tokens.

    `history` (rows, max(context, history_length)) holds each row's latest tokens (for the
    refills and the repetition penalty); a row with fewer is padded on the left with its
    first token, which leaves the set of tokens seen unchanged."""

    def __init__(self, decoder: Decoder, capacity: int, history_length: int = 0):
        self.decoder = decoder
        c = decoder.config
        self.cache = KVCache(c, capacity, decoder.weights.embedding.device, decoder.weights.embedding.dtype)
        self.keep = max(1, c.context // 2)
        self.width = max(c.context, history_length)
        self.history = torch.zeros((0, self.width), dtype=torch.long, device=decoder.weights.embedding.device)

    def __len__(self) -> int:
        return self.history.shape[0]

    def add(self, prompts: torch.Tensor) -> torch.Tensor:
        """Start rows for prompts (R, P), P >= 1, after the rows already there: logits (R, vocab)."""
        R, P = prompts.shape
        first = len(self)
        if first + R > self.cache.rows:
            raise ValueError(f"{first + R} rows exceed the capacity of {self.cache.rows}")
        recent = prompts[:, -self.width :]
        padding = recent[:, :1].expand(R, self.width - recent.shape[1])
        self.history = torch.cat((self.history, torch.cat((padding, recent), dim=1)))
        return self.decoder.prefill(prompts[:, -self.decoder.config.context :], self.cache, first)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token (n,) to every row; the logits (n, vocab) after it."""
        self.history = torch.cat((self.history[:, 1:], tokens[:, None]), dim=1)
        full = [row for row, length in enumerate(self.cache.lengths[: len(self)]) if length == self.cache.context]
        if len(full) == len(self):  # every row at once, as in `blu generate`: one prefill for all
            return self.decoder.prefill(self.history[:, -self.keep :], self.cache)
        # Re-encode all but the new token (the step below adds it), one prefill for each run of
        # adjacent full rows (row - i constant): a server's rows that started together refill together.
        for _, run in groupby(enumerate(full), key=lambda item: item[1] - item[0]):
            first, *others = [row for _, row in run]
            count = 1 + len(others)
            if self.keep > 1:
                self.decoder.prefill(self.history[first : first + count, -self.keep : -1], self.cache, first)
            else:
                self.cache.reset(first, count)
        return self.decoder.step(tokens, self.cache)

    def remove(self, row: int) -> None:
        """Drop a row; the last row takes its place (rows after it keep their indices otherwise)."""
        last = len(self) - 1
        if row != last:
            self.cache.move(last, row)
            self.history[row] = self.history[last]
        self.cache.reset(last, 1)
        self.history = self.history[:last]
