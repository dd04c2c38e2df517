"""Generation: the KV cache, sampling, and streaming text of any length.

Past the context. The model was trained on windows of `context` tokens that
start from nothing, so at generation it must never see a position beyond
`context - 1`, nor a window whose first token carries history from before it.
When the cache fills up we therefore keep the last `context // 2` tokens,
re-encode them from position 0 into an empty cache, and carry on. Every token
is then predicted from between context/2 and context tokens of real history,
exactly the situation of the second half of a training window. The cost is one
forward pass over context/2 tokens every context/2 generated tokens.
"""

import math

import torch
import torch.nn.functional as F

from .config import DEFAULT_MAX_NEW_TOKENS, SamplingOptions
from .errors import BluError


class KVCache:
    """Keys and values for every layer, preallocated once per call and indexed by position.

    One tensor per layer holds both, keys then values along the head axis, so a decode step
    whose projections come out as [k heads | v heads] writes both in one operation."""

    def __init__(self, n_layer, batch_size, n_kv_head, length, head_dim, device, dtype):
        kv = torch.zeros((n_layer, batch_size, 2 * n_kv_head, length, head_dim), device=device, dtype=dtype)
        # Views of each layer made once rather than per token: k|v as complex numbers (pairs of
        # adjacent values), which DecodeStep writes, then k and v, which attention reads.
        self.layers = [(torch.view_as_complex(layer.unflatten(-1, (-1, 2))), layer[:, :n_kv_head], layer[:, n_kv_head:])
                       for layer in kv]
        self.pos = 0  # number of positions filled; DecodeStep advances it

    @classmethod
    def for_model(cls, model, batch_size: int) -> "KVCache":
        c = model.config
        p = model.tok_embeddings.weight
        return cls(c.n_layer, batch_size, c.n_kv_head, c.context, c.head_dim, p.device, p.dtype)

    def reset(self):
        self.pos = 0


class DecodeStep:
    """The forward pass of generation: the model's logits after each new token, computed
    incrementally with a KV cache and in fewer tensor operations than the module forward.

    Token-by-token generation on a CPU is bound by the overhead of each tensor operation,
    not by arithmetic (BENCHMARKS.md), so this computes the same function with fewer of them:
    each RMSNorm gain is folded into the matrix after it and the attention scale into the
    query rows; RMSNorm takes three operations; the residual adds ride on the products
    (`addmm`); there are no module calls. The rotary embedding is a complex product: the
    query and key rows of each head are reordered so that the pairs it rotates together,
    (i, i + head_dim/2), sit side by side as the real and imaginary parts of one complex
    number, and the values are "rotated" by 1 so that k and v turn in one product whose
    output is the cache itself. The first layer's queries, keys and values, which depend on
    the token alone, come from a table by token id. The keys in the cache are in this step's
    row order (attention does not care, as queries share it): fill a cache with this step
    only. The folded weights are a snapshot taken when the step is built: build one per
    generation call."""

    @torch.no_grad()
    def __init__(self, model):
        c = model.config
        self.config = c
        self.gqa = c.n_kv_head != c.n_head
        half, rotated = c.head_dim // 2, c.n_head + c.n_kv_head  # q and k heads; the value heads follow
        pairs = torch.stack((torch.arange(half), torch.arange(half, c.head_dim)), dim=1).flatten()  # 0, h, 1, h+1, ...
        rows = torch.cat([pairs + h * c.head_dim for h in range(rotated)]
                         + [torch.arange(rotated * c.head_dim, (rotated + c.n_kv_head) * c.head_dim)])
        self.layers = []
        for block in model.layers:
            qkv = block.attention.qkv_proj.weight * block.attention_norm.weight
            qkv[: c.n_head * c.head_dim] /= math.sqrt(c.head_dim)
            gate_up = block.feed_forward.gate_up_proj.weight * block.ffn_norm.weight
            # Transposed views, (in, out), for x @ w by mm and addmm: what F.linear does, in fewer calls.
            self.layers.append((qkv[rows].t(), block.attention.o_proj.weight.t(),
                                gate_up.t(), block.feed_forward.down_proj.weight.t()))
        self.head = (model.output.weight * model.norm.weight).t()
        self.embedding = model.tok_embeddings.weight
        self.eps = self.embedding.new_full((1, 1, 1), c.norm_eps)
        # The first layer's queries, keys and values depend on the token alone (embedding, RMSNorm,
        # projection): look them up by token id, where that table is no larger than the matrix.
        self.first_qkv = None
        if c.vocab_size <= c.dim:
            self.first_qkv = torch.mm(self._norm(self.embedding), self.layers[0][0])  # (vocab, q|k|v rows)
        # model.rope_cos/sin hold cos and -sin of each pair's angle in their first half
        turn = torch.complex(model.rope_cos[:, :half], -model.rope_sin[:, :half])  # (context, half)
        self.turn_q = turn.expand(c.n_head, -1, -1)  # (n_head, context, half)
        self.turn_kv = torch.cat((turn.expand(c.n_kv_head, -1, -1), turn.new_ones(c.n_kv_head, c.context, half)))

    def _norm(self, x):
        """RMSNorm without gain in three operations: x . x / dim + eps in one batched product
        (F.rms_norm takes several more, each with its fixed cost)."""
        if x.shape[0] == 1:  # one row: x @ x.T is its (1, 1) mean square, cheaper than a batched product
            return x * torch.addmm(self.eps.view(1, 1), x, x.t(), alpha=1 / x.shape[-1]).rsqrt_()
        mean_square = torch.baddbmm(self.eps, x[:, None], x[:, :, None], alpha=1 / x.shape[-1])  # (N, 1, 1)
        return x * mean_square.view(-1, 1).rsqrt_()

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab) after tokens (B, T) placed at cache.pos, which it advances.
        Several tokens at once (a prompt, a refill) go into an empty cache only."""
        c, pos = self.config, cache.pos
        B, T = tokens.shape
        if pos + T > c.context:
            raise ValueError(f"position {pos + T - 1} exceeds the context of {c.context}")
        if T > 1 and pos > 0:
            raise ValueError("several tokens at once go into an empty cache only")
        ids = tokens.reshape(-1)
        x = self.embedding[ids]  # (B*T, dim)
        turn_q, turn_kv = self.turn_q[:, pos : pos + T], self.turn_kv[:, pos : pos + T]
        for layer, ((w_qkv, w_o, w_gate_up, w_down), (kv, k, v)) in enumerate(zip(self.layers, cache.layers)):
            if layer == 0 and self.first_qkv is not None:
                qkv = self.first_qkv[ids]
            else:
                qkv = torch.mm(self._norm(x), w_qkv)
            qkv = qkv.view(B, T, -1, c.head_dim // 2, 2).transpose(1, 2)
            qkv = torch.view_as_complex(qkv)  # (B, heads, T, head_dim / 2)
            torch.mul(qkv[:, c.n_head :], turn_kv, out=kv.narrow(2, pos, T))  # k rotated and v straight into the cache
            q = torch.view_as_real(qkv[:, : c.n_head] * turn_q).view(B, c.n_head, T, c.head_dim)
            y = F.scaled_dot_product_attention(q, k.narrow(2, 0, pos + T), v.narrow(2, 0, pos + T),
                                               is_causal=T > 1, scale=1.0, enable_gqa=self.gqa)  # (B, n_head, T, head_dim)
            x = torch.addmm(x, y.transpose(1, 2).reshape(B * T, -1), w_o)
            gate, up = torch.mm(self._norm(x), w_gate_up).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        cache.pos += T
        return torch.mm(self._norm(x.view(B, T, -1)[:, -1]), self.head)


def penalize_repetition(logits, recent, penalty: float):
    """Divide positive logits (multiply negative ones) of tokens in `recent` (B, W) by `penalty`,
    as in CTRL and transformers' RepetitionPenaltyLogitsProcessor."""
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, recent, True)
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty).clamp(-1e30, 1e30)  # extreme penalties stay finite
    return torch.where(seen, penalized, logits)


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None,
           recent: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab); `recent` (B, W) are the last tokens, for the repetition penalty."""
    if options.repetition_penalty != 1 and recent is not None:
        logits = penalize_repetition(logits, recent[:, -options.repetition_window :], options.repetition_penalty)
    if options.temperature == 0:
        return logits.argmax(dim=-1)
    # In float64 (any positive Python float is a valid temperature) and from the maximum down,
    # so that even a tiny temperature cannot overflow to inf - inf.
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / options.temperature
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
    than the draw for a small vocabulary. E is kept away from 0 so that a zero weight never wins."""
    noise = torch.empty_like(weights).exponential_(generator=generator).clamp_min_(torch.finfo(weights.dtype).tiny)
    return (weights / noise).argmax(dim=-1)


@torch.inference_mode()
def decode(model, prompt: torch.Tensor, steps: int, choose, history_length: int = 0):
    """The generation loop. Feed `prompt` (B, P), then `steps` times ask
    `choose(logits (B, vocab), history (B, L))` for the next tokens (B,), yield them and feed
    them back, refilling the cache as the module docstring says. `history` holds the last
    max(context, history_length) tokens."""
    context = model.config.context
    keep = max(1, context // 2)
    cache = KVCache.for_model(model, batch_size=prompt.shape[0])
    step = DecodeStep(model)
    history = prompt[:, -context:]
    logits = step(history, cache)
    for _ in range(steps):
        token = choose(logits, history)
        yield token
        history = torch.cat((history[:, -max(context, history_length) :], token[:, None]), dim=1)
        if cache.pos == context:
            cache.reset()
            logits = step(history[:, -keep:], cache)
        else:
            logits = step(history[:, -1:], cache)


def stream_tokens(model, prompt_ids: list[int], max_new_tokens: int, options: SamplingOptions, generator=None):
    """Yield `max_new_tokens` token ids continuing `prompt_ids` (at least one), for any length of prompt and output."""
    if not prompt_ids:
        raise ValueError("stream_tokens needs at least one prompt token")
    device = model.tok_embeddings.weight.device
    prompt = torch.tensor([list(prompt_ids)], device=device)
    for token in decode(model, prompt, max_new_tokens, sampler(options, generator), options.repetition_window):
        yield int(token[0])


def sampler(options: SamplingOptions, generator):
    """A `choose` function for `decode` that samples under `options`."""

    def choose(logits, history):
        logits[:, 0] = float("-inf")  # never emit <unk>: it stands for no character in particular
        return sample(logits, options, generator, history)

    return choose


def stream_losses(model, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher forcing through the generation loop: the loss (B, L-1) of each token of
    `tokens` (B, L) given everything before it, as generation would have computed it."""
    losses = []

    def choose(logits, history):
        target = tokens[:, len(losses) + 1]
        losses.append(torch.nn.functional.cross_entropy(logits.float(), target, reduction="none"))
        return target

    for _ in decode(model, tokens[:, :1], tokens.shape[1] - 1, choose):
        pass
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
    device = model.tok_embeddings.weight.device
    losses = torch.cat([stream_losses(model, data[i : i + batch_size].to(device)).cpu()
                        for i in range(0, n_segments, batch_size)])  # (segments, length - 1); column t predicts token t + 1
    rows = []
    for start, end in position_buckets(model.config.context, span):
        piece = losses[:, start - 1 : end - 1]
        # The standard error tells a real difference between buckets from the variety of the text in them.
        rows.append({"from": start, "to": end, "loss": piece.mean().item(), "tokens": piece.numel(),
                     "stderr": (piece.var() / piece.numel()).sqrt().item()})
    return rows


class StopStrings:
    """Cuts streamed text at the first stop string, holding back only what could still begin one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is now safe to show."""
        if self.stopped:
            return ""
        self.pending += piece
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class TextGenerator:
    """A trained model with its tokenizer: what `blu.load(run_dir)` returns."""

    def __init__(self, model, tokenizer, config=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config

    def _prepare(self, prompt: str, max_new_tokens: int, seed, controls: dict):
        options = SamplingOptions(**controls)
        options.validate()
        if max_new_tokens < 0:
            raise BluError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
        device = self.model.tok_embeddings.weight.device
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        ids = [i for i in self.tokenizer.encode(prompt) if i != 0]
        if not ids:  # there is no beginning-of-text token: start after a newline, like a new paragraph
            ids = [self.tokenizer.stoi.get("\n", 1)]
        return options, generator, ids

    def generate(self, prompt: str = "", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int | None = None,
                 stop: list[str] = (), **controls):
        """An iterator over pieces of text continuing `prompt` (which is not repeated).

        `controls` are the fields of SamplingOptions (temperature, top_k, top_p, min_p,
        repetition_penalty, repetition_window); generation ends early at any of the
        `stop` strings, which are not included. Prompt characters outside the vocabulary
        are dropped (see `unknown_chars`). Bad values raise BluError here, not at the first piece."""
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        tokens = stream_tokens(self.model, ids, max_new_tokens, options, generator)
        return self._text(tokens, StopStrings(stop))

    def _text(self, tokens, stops: StopStrings):
        for token in tokens:
            piece = stops.feed(self.tokenizer.decode([token]))
            if piece:
                yield piece
            if stops.stopped:
                return
        if rest := stops.flush():
            yield rest

    def generate_many(self, prompt: str = "", num_samples: int = 1, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      seed: int | None = None, stop: list[str] = (), **controls) -> list[str]:
        """`num_samples` continuations of one prompt, computed together as a batch."""
        if num_samples < 1:
            raise BluError(f"num-samples must be at least 1, got {num_samples}")
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        prompt_tensor = torch.tensor([ids] * num_samples, device=self.model.tok_embeddings.weight.device)
        filters = [StopStrings(stop) for _ in range(num_samples)]
        texts = [""] * num_samples
        choose = sampler(options, generator)
        for tokens in decode(self.model, prompt_tensor, max_new_tokens, choose, options.repetition_window):
            for row, token in enumerate(tokens.tolist()):
                texts[row] += filters[row].feed(self.tokenizer.decode([token]))
            if all(f.stopped for f in filters):
                break
        return [text + f.flush() for text, f in zip(texts, filters)]

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)
