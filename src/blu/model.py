"""The Llama-style Transformer: RMSNorm, rotary embeddings, attention with
optional grouped-query heads, SwiGLU, no biases.

Every choice matches Hugging Face's LlamaForCausalLM, so export is a rename
(see export/hf.py) and transformers serves as the reference in the tests.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_angles(config: ModelConfig) -> torch.Tensor:
    """The rotary angle of each position and frequency: (context, head_dim/2), position x base^(-2i/head_dim)."""
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    return torch.outer(torch.arange(config.context, dtype=torch.float32), inv_freq)


def rope_table(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for positions 0..context-1, each (context, head_dim).

    Hugging Face's layout pairs dimension i with i + head_dim/2 and rotates with
    rotate_half(x) = cat(-x2, x1). Since roll(x, head_dim/2) = cat(x2, x1), we
    fold the sign into the sin table: rotate_half(x) * sin = roll(x) * cat(-sin, sin)."""
    angles = rope_angles(config)
    return torch.cat((angles.cos(), angles.cos()), dim=-1), torch.cat((-angles.sin(), angles.sin()), dim=-1)


def apply_rope(x, cos, signed_sin):
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def fused_rows(config: ModelConfig) -> dict[str, list[int]]:
    """Row sizes of the parts of each fused weight: qkv_proj is [q | k | v], gate_up_proj [gate | up]."""
    return {
        "qkv_proj": [config.n_head * config.head_dim] + [config.n_kv_head * config.head_dim] * 2,
        "gate_up_proj": [config.hidden_dim] * 2,
    }


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # Queries, keys and values in one matmul: rows are [q heads | k heads | v heads].
        self.qkv_proj = nn.Linear(config.dim, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        n_qk = self.n_head + self.n_kv_head
        qkv = self.qkv_proj(x).view(B, T, n_qk + self.n_kv_head, self.head_dim).transpose(1, 2)
        # (B, n_head + 2 n_kv_head, T, head_dim); rotate queries and keys together
        qk = apply_rope(qkv[:, :n_qk], cos, sin)
        q, k, v = qk[:, : self.n_head], qk[:, self.n_head :], qkv[:, n_qk:]  # (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # y: (B, n_head, T, head_dim)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.dim, 2 * config.hidden_dim, bias=False)  # rows: [gate | up]
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)
        self.dropout = config.dropout

    generator = None  # where dropout masks come from (None: the global generator); training sets its own

    def _drop(self, h):
        # Only while training with dropout on: even a no-op mask costs a call. The mask is drawn
        # here rather than by F.dropout, which takes no generator: with one, a resumed run can
        # draw the masks it would have drawn had it never stopped.
        if not (self.training and self.dropout):
            return h
        return h * torch.empty_like(h).bernoulli_(1 - self.dropout, generator=self.generator).div_(1 - self.dropout)

    def forward(self, x, cos, sin):
        x = x + self._drop(self.attention(self.attention_norm(x), cos, sin))
        return x + self._drop(self.feed_forward(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_table(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None):
        # GPT-2 initialisation: residual output projections shrink with depth
        # so the residual stream keeps unit scale at the start of training.
        # Draws from `generator` (None: the global one), in named_parameters order.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std, generator=generator)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T), each position seeing those before it.
        Generation computes the same function token by token: decode.Decoder."""
        return self.output(self.features(idx))

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """The normed last hidden states (B, T, dim) that the head turns into logits: evaluation
        applies the head a slice at a time, since B x T x vocab logits can be gigabytes."""
        B, T = idx.shape
        if T > self.config.context:
            raise ValueError(f"{T} positions exceed the context of {self.config.context}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, head_dim), broadcast over batch and heads
        x = self.tok_embeddings(idx)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
