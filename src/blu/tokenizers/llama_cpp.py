"""llama.cpp's byte-level BPE pre-tokenizers (GGUF's `tokenizer.ggml.pre`), by name, as the
`tokenizers` steps that split text the way llama.cpp does (src/llama-vocab.cpp's regexes).

Both directions use it: importing a GGUF file builds its tokenizer.json from the name
(pretrained/gguf.py), and exporting an imported run names its tokenizer.json's pre-tokenizer
(export/gguf_vocab.py), refusing one that is not here rather than writing a file llama.cpp
would split differently.
"""

import json

from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer


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


def _as_json(step) -> dict:
    holder = HFTokenizer(models.BPE())
    holder.pre_tokenizer = step
    return json.loads(holder.to_str())["pre_tokenizer"]


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
