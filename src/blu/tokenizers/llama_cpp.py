"""How llama.cpp tokenizes (src/llama-vocab.cpp), in `tokenizers`' terms:

- its byte-level BPE pre-tokenizers (GGUF's `tokenizer.ggml.pre`), by name, as the steps that
  split text the way llama.cpp's regexes do;
- its `llama` (SentencePiece-style) tokenizer's merges, which it keeps as a score per token.

Both directions use it: importing a GGUF file builds its tokenizer.json from these
(pretrained/gguf_tokenizer.py), and exporting an imported run names its tokenizer.json's
pre-tokenizer or checks that its merges are the ones llama.cpp would apply
(export/gguf_vocab.py), refusing what is not here rather than writing a file llama.cpp
would tokenize differently.
"""

import json

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .pretrained import SENTENCEPIECE_SPACE


def _gpt2_split():
    return [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]


PRE_TOKENIZERS = {
    "gpt-2": _gpt2_split,
    "default": _gpt2_split,
    "smollm": lambda: [pre_tokenizers.Digits(individual_digits=True), *_gpt2_split()],
    "llama-bpe": lambda: [
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                                   r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
}


def pre_tokenizer(name: str):
    """The `tokenizers` pre-tokenizer that splits text as llama.cpp's `name` does."""
    steps = PRE_TOKENIZERS[name]()
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _comparable(step):
    """A pre-tokenizer's JSON without what does not change the split (offsets only)."""
    if isinstance(step, dict):
        return {k: _comparable(v) for k, v in step.items() if k != "trim_offsets"}
    if isinstance(step, list):
        return [_comparable(v) for v in step]
    return step


def _as_json(step, part: str = "pre_tokenizer") -> dict:
    holder = HFTokenizer(models.BPE())
    setattr(holder, part, step)
    return json.loads(holder.to_str())[part]


def pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer, or None if it has none of them.
    A one-step Sequence is the same split as its step."""
    pre = tokenizer_json.get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    wanted = _comparable(pre)
    for name in PRE_TOKENIZERS:
        if name != "default" and _comparable(_as_json(pre_tokenizer(name))) == wanted:
            return name
    return None


def sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The merges of llama.cpp's `llama` tokenizer as a BPE's ranked merges. llama.cpp starts from
    one symbol per character and repeatedly joins the neighbouring pair whose joined text is a
    token (of any type) of the highest score: every split of every token into two tokens is a
    merge, ranked by the joined token's score (then its id, then the shorter left side)."""
    ids = {token: i for i, token in enumerate(tokens)}
    pairs = [(scores[i], i, token[:k], token[k:]) for token, i in ids.items() for k in range(1, len(token))
             if token[:k] in ids and token[k:] in ids]
    pairs.sort(key=lambda p: (-p[0], p[1], len(p[2])))
    return [(left, right) for _, _, left, right in pairs]


def sentencepiece_text_steps(space_prefix: bool):
    """The normalizer and decoder of llama.cpp's `llama` tokenizer: every space written as `▁`, one
    put before the text when `space_prefix` (GGUF's add_space_prefix), and taken off it when decoded."""
    replace = normalizers.Replace(" ", SENTENCEPIECE_SPACE)
    normalizer = normalizers.Sequence([normalizers.Prepend(SENTENCEPIECE_SPACE), replace]) if space_prefix else replace
    steps = [decoders.Replace(SENTENCEPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    return normalizer, decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))


def sentencepiece_space_prefix(tokenizer_json: dict) -> bool | None:
    """Whether a tokenizer.json's normalizer and decoder are llama.cpp's `llama` ones with the space
    put before the text (True) or without it (False); None if they are neither."""
    found = (tokenizer_json.get("normalizer"), tokenizer_json.get("decoder"))
    for space_prefix in (True, False):
        normalizer, decoder = sentencepiece_text_steps(space_prefix)
        if (_as_json(normalizer, "normalizer"), _as_json(decoder, "decoder")) == found:
            return space_prefix
    return None
