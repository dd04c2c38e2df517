"""Generation: the loop that samples and feeds back tokens, and the text API (`TextGenerator`,
what `blu.load` returns).

The forward of generation and the past-the-context rule are in decode.py, the choice of each
token in sampling.py, and the text shown for the tokens (whole characters, stop strings, the
end of text) in text_stream.py."""

import torch

from .config import DEFAULT_MAX_NEW_TOKENS, SamplingOptions
from .decode import DecodeBatch, Decoder
from .device import device_of
from .errors import BluError
from .sampling import sample
from .text_stream import TextStream


@torch.inference_mode()
def generation_loop(model, prompt: torch.Tensor, steps: int, choose, history_length: int = 0):
    """The generation loop. Feed `prompt` (B, P), then `steps` times ask
    `choose(logits (B, vocab), history (B, L))` for the next tokens (B,), yield them and feed
    them back. `history` holds at least the last max(context, history_length) tokens. `model`
    may be a Decoder of it (TextGenerator.decoder), which saves folding its weights again."""
    decoder = model if isinstance(model, Decoder) else Decoder(model)
    batch = DecodeBatch(decoder, capacity=prompt.shape[0], history_length=history_length)
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
    device = model.weights.embedding.device if isinstance(model, Decoder) else device_of(model)
    prompt = torch.tensor([list(prompt_ids)], device=device)
    for token in generation_loop(model, prompt, max_new_tokens, sampler(options, generator, banned),
                                 options.repetition_window):
        yield int(token[0])


def forbid(logits: torch.Tensor, banned: int | None) -> torch.Tensor:
    """`logits` (B, vocab), in place, with token `banned` made impossible: the tokenizer's <unk>,
    which stands for no character in particular, is never generated (None: nothing banned)."""
    if banned is not None:
        logits[:, banned] = float("-inf")
    return logits


def sampler(options: SamplingOptions, generator, banned: int | None = None):
    """A `choose` function for `generation_loop` that samples under `options`, never choosing `banned`."""

    def choose(logits, history):
        return sample(forbid(logits, banned), options, generator, history)

    return choose


class TextGenerator:
    """A trained model with its tokenizer: what `blu.load(run_dir)` returns. `meta` is what the
    run's config.json holds (None for a model that has no run folder).

    Generation reads the model's weights only (decode.Decoder), so the model is left in the mode
    its caller has it in: training can sample from the model it is training."""

    def __init__(self, model, tokenizer, meta: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self._decoder: tuple[list, Decoder] | None = None  # with where and which version of each weight it folded

    def decoder(self) -> Decoder:
        """The model's Decoder, kept while no weight has changed (no optimizer step, no load since):
        folding copies every weight, 0.4 to 0.7 s for a 135M model, which each reply of
        `blu chat` would pay again."""
        versions = [(p.data_ptr(), p._version) for p in self.model.parameters()]
        if self._decoder is None or self._decoder[0] != versions:
            self._decoder = (versions, Decoder(self.model))
        return self._decoder[1]

    def _prepare(self, prompt: str, max_new_tokens: int, seed, controls: dict):
        options = SamplingOptions(**controls)
        options.validate()
        if max_new_tokens < 0:
            raise BluError(f"max-new-tokens must be >= 0, got {max_new_tokens}")
        generator = None if seed is None else torch.Generator(device=device_of(self.model)).manual_seed(seed)
        ids = [i for i in self.tokenizer.encode(prompt) if i != self.tokenizer.unk_id] or self.tokenizer.start_ids()
        return options, generator, ids

    def _stream(self, max_new_tokens: int, stop, stop_at_end: bool) -> TextStream:
        return TextStream(self.tokenizer, stop, max_new_tokens, None if stop_at_end else ())

    def generate(self, prompt: str = "", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int | None = None,
                 stop: list[str] = (), stop_at_end: bool = True, **controls):
        """An iterator over pieces of text continuing `prompt` (which is not repeated).

        `controls` are the fields of SamplingOptions (temperature, top_k, top_p, min_p,
        repetition_penalty, repetition_window); generation ends early at any of the
        `stop` strings, which are not included, and (`stop_at_end`) at the tokenizer's
        end-of-text token, where it has one. Prompt characters outside the vocabulary are
        dropped (see `unknown_chars`). Bad values raise BluError here, not at the first piece."""
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        tokens = stream_tokens(self.decoder(), ids, max_new_tokens, options, generator, self.tokenizer.unk_id)
        return self._pieces(tokens, self._stream(max_new_tokens, stop, stop_at_end))

    @staticmethod
    def _pieces(tokens, stream: TextStream):
        for token in tokens:
            if piece := stream.feed(token):
                yield piece
            if stream.reason:
                return
        if rest := stream.finish():
            yield rest

    def generate_many(self, prompt: str = "", num_samples: int = 1, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      seed: int | None = None, stop: list[str] = (), stop_at_end: bool = True, **controls) -> list[str]:
        """`num_samples` continuations of one prompt, computed together as a batch."""
        if num_samples < 1:
            raise BluError(f"num-samples must be at least 1, got {num_samples}")
        options, generator, ids = self._prepare(prompt, max_new_tokens, seed, controls)
        prompts = torch.tensor([ids] * num_samples, device=device_of(self.model))
        streams = [self._stream(max_new_tokens, stop, stop_at_end) for _ in range(num_samples)]
        texts = [""] * num_samples
        choose = sampler(options, generator, self.tokenizer.unk_id)
        for tokens in generation_loop(self.decoder(), prompts, max_new_tokens, choose, options.repetition_window):
            for row, token in enumerate(tokens.tolist()):
                texts[row] += streams[row].feed(token)
            if all(stream.reason for stream in streams):
                break
        return [text + stream.finish() for text, stream in zip(texts, streams)]

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)
