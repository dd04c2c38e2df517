"""Generation: the loop that samples and feeds back tokens, stop strings, and the text API.

The forward of generation and the past-the-context rule are in decode.py, the
choice of each token in sampling.py."""

import torch

from .config import DEFAULT_MAX_NEW_TOKENS, SamplingOptions
from .decode import DecodeBatch, Decoder
from .device import device_of
from .errors import BluError
from .sampling import sample


@torch.inference_mode()
def decode(model, prompt: torch.Tensor, steps: int, choose, history_length: int = 0):
    """The generation loop. Feed `prompt` (B, P), then `steps` times ask
    `choose(logits (B, vocab), history (B, L))` for the next tokens (B,), yield them and feed
    them back. `history` holds at least the last max(context, history_length) tokens."""
    batch = DecodeBatch(Decoder(model), capacity=prompt.shape[0], history_length=history_length)
    logits = batch.add(prompt)
    for _ in range(steps):
        token = choose(logits, batch.history)
        yield token
        logits = batch.step(token)


def stream_tokens(model, prompt_ids: list[int], max_new_tokens: int, options: SamplingOptions, generator=None,
                  banned: int | None = None):
    """Yield `max_new_tokens` token ids continuing `prompt_ids` (at least one), for any length of prompt and output."""
    if not prompt_ids:
        raise ValueError("stream_tokens needs at least one prompt token")
    prompt = torch.tensor([list(prompt_ids)], device=device_of(model))
    for token in decode(model, prompt, max_new_tokens, sampler(options, generator, banned), options.repetition_window):
        yield int(token[0])


def sampler(options: SamplingOptions, generator, banned: int | None = None):
    """A `choose` function for `decode` that samples under `options`, never choosing `banned`
    (the tokenizer's <unk>: it stands for no character in particular)."""

    def choose(logits, history):
        if banned is not None:
            logits[:, banned] = float("-inf")
        return sample(logits, options, generator, history)

    return choose


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
        generator = None if seed is None else torch.Generator(device=device_of(self.model)).manual_seed(seed)
        ids = [i for i in self.tokenizer.encode(prompt) if i != self.tokenizer.unk_id] or self.tokenizer.start_ids()
        return options, generator, ids

    def generate(self, prompt: str = "", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int | None = None,
                 stop: list[str] = (), stop_at_end: bool = True, **controls):
        """An iterator over pieces of text continuing `prompt` (which is not repeated).

        `controls` are the fields of SamplingOptions (temperature, top_k, top_p, min_p,
        repetition_penalty, repetition_window); generation ends early at any of the
        `stop` strings, which are not included, and (`stop_at_end`) at the tokenizer's
        end-of-text token, where it has one. Prompt characters outside the vocabulary are
        dropped (see `unknown_chars`). Bad values raise BluError here, not at the first piece."""
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        tokens = stream_tokens(self.model, ids, max_new_tokens, options, generator, self.tokenizer.unk_id)
        return self._text(tokens, StopStrings(stop), self.tokenizer.end_id if stop_at_end else None)

    def _text(self, tokens, stops: StopStrings, end_id: int | None):
        text = self.tokenizer.stream_decoder()
        for token in tokens:
            if token == end_id:
                break
            piece = stops.feed(text.feed(token))
            if piece:
                yield piece
            if stops.stopped:
                return
        if rest := stops.feed(text.flush()) + stops.flush():
            yield rest

    def generate_many(self, prompt: str = "", num_samples: int = 1, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      seed: int | None = None, stop: list[str] = (), stop_at_end: bool = True, **controls) -> list[str]:
        """`num_samples` continuations of one prompt, computed together as a batch."""
        if num_samples < 1:
            raise BluError(f"num-samples must be at least 1, got {num_samples}")
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        prompt_tensor = torch.tensor([ids] * num_samples, device=device_of(self.model))
        decoders = [self.tokenizer.stream_decoder() for _ in range(num_samples)]
        filters = [StopStrings(stop) for _ in range(num_samples)]
        texts = [""] * num_samples
        choose = sampler(options, generator, self.tokenizer.unk_id)
        end_id = self.tokenizer.end_id if stop_at_end else None
        ended = [False] * num_samples
        for tokens in decode(self.model, prompt_tensor, max_new_tokens, choose, options.repetition_window):
            for row, token in enumerate(tokens.tolist()):
                ended[row] = ended[row] or token == end_id
                if not ended[row]:
                    texts[row] += filters[row].feed(decoders[row].feed(token))
            if all(e or f.stopped for e, f in zip(ended, filters)):
                break
        return [text + f.feed(d.flush()) + f.flush() for text, f, d in zip(texts, filters, decoders)]

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)
