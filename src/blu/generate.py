"""Generation: the KV cache, sampling, and streaming text of any length.

Past the context. The model was trained on windows of `context` tokens that
start from nothing, so at generation it must never see a position beyond
`context - 1`, nor a window whose first token carries history from before it.
When the cache fills up we therefore keep the last `context // 2` tokens,
re-encode them from position 0 into an empty cache, and carry on. Every token
is then predicted from between context/2 and context - 1 tokens of real
history, exactly the situation of the second half of a training window.
"""

from dataclasses import dataclass

import torch

from .errors import BluError


class KVCache:
    """Keys and values for every layer, preallocated once per call and indexed by position."""

    def __init__(self, n_layer, batch_size, n_kv_head, length, head_dim, device, dtype):
        shape = (n_layer, batch_size, n_kv_head, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled; the model advances it after each forward

    @classmethod
    def for_model(cls, model, batch_size: int) -> "KVCache":
        c = model.config
        p = model.tok_embeddings.weight
        return cls(c.n_layer, batch_size, c.n_kv_head, c.context, c.head_dim, p.device, p.dtype)

    def store(self, layer: int, k, v):
        """Write k, v (B, n_kv_head, T, head_dim) at the current position; return all keys and values so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self):
        self.pos = 0


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    def validate(self):
        if not self.temperature >= 0:
            raise BluError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise BluError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise BluError(f"top-p must be in (0, 1], got {self.top_p}")


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab) under temperature, top-k and top-p."""
    if options.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / options.temperature
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if options.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set whose mass reaches top_p: drop a token when the mass before it already does.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= options.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def stream_tokens(model, prompt_ids: list[int], max_new_tokens: int, options: SamplingOptions, generator=None):
    """Yield `max_new_tokens` token ids continuing `prompt_ids`, for any length of prompt and output."""
    context = model.config.context
    keep = max(1, context // 2)  # history kept when the cache is full (see the module docstring)
    device = model.tok_embeddings.weight.device
    cache = KVCache.for_model(model, batch_size=1)
    history = list(prompt_ids)[-context:]
    if not history:
        raise ValueError("stream_tokens needs at least one prompt token")
    logits = model(torch.tensor([history], device=device), cache)[:, -1]
    for _ in range(max_new_tokens):
        logits[:, 0] = float("-inf")  # never emit <unk>: it stands for no character in particular
        token = sample(logits, options, generator)
        yield int(token)
        history.append(int(token))
        if cache.pos == context:
            history = history[-keep:]
            cache.reset()
            logits = model(torch.tensor([history], device=device), cache)[:, -1]
        else:
            logits = model(token.view(1, 1), cache)[:, -1]


class TextGenerator:
    """A trained model with its tokenizer: what `blu.load(run_dir)` returns."""

    def __init__(self, model, tokenizer, config=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config

    def generate(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        """Iterate over pieces of text continuing `prompt` (which is not repeated).

        Prompt characters outside the vocabulary are dropped; see `unknown_chars`."""
        options = SamplingOptions(temperature, top_k, top_p)
        options.validate()
        if max_new_tokens < 0:
            raise BluError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.model.tok_embeddings.weight.device).manual_seed(seed)
        ids = [i for i in self.tokenizer.encode(prompt) if i != 0]
        if not ids:  # there is no beginning-of-text token: start after a newline, like a new paragraph
            ids = [self.tokenizer.stoi.get("\n", 1)]
        # A plain function returning a generator, so that bad values fail here and not at the first piece.
        return (self.tokenizer.decode([t]) for t in stream_tokens(self.model, ids, max_new_tokens, options, generator))

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)
