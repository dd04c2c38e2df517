"""Tokenizers: one interface (base.py), chosen by what tokenizer.json holds.

    char.py       `char`: one token per character of the training text, plus <unk>
    bytelevel.py  `byte` (the 256 UTF-8 bytes) and `bpe` (a byte-level BPE trained on the
                  training text), both with an end-of-text token

This file builds a new tokenizer of a kind, or reads the one a tokenizer.json holds.
"""

import json

from ..config import DEFAULT_BPE_VOCAB_SIZE, TOKENIZER_KINDS
from ..errors import BluError
from .base import StreamDecoder, Tokenizer
from .bytelevel import ByteLevelTokenizer, byte_tokenizer, from_native_json, train_bpe
from .char import UNK, CharTokenizer
from .pretrained import PretrainedTokenizer

__all__ = ["UNK", "ByteLevelTokenizer", "CharTokenizer", "StreamDecoder", "Tokenizer", "build_tokenizer",
           "check_tokenizer_settings", "tokenizer_from_json"]


def check_tokenizer_settings(kind: str, vocab_size: int | None) -> None:
    """Refuse a kind or vocabulary size build_tokenizer cannot make, before any text is read."""
    if kind not in TOKENIZER_KINDS:
        raise BluError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {kind!r}")
    if vocab_size is not None and kind != "bpe":
        raise BluError(f"vocab-size is for --tokenizer bpe; a {kind} vocabulary comes from what it is")
    if vocab_size is not None and not 258 <= vocab_size <= 1 << 20:
        raise BluError(f"vocab-size for bpe must be between 258 (the 256 bytes, one merge, end-of-text) "
                       f"and {1 << 20}, got {vocab_size}")


def build_tokenizer(kind: str, texts, vocab_size: int | None = None) -> Tokenizer:
    """A new tokenizer of `kind` whose vocabulary comes from the training text, a str or an
    iterable of str read once (`vocab_size`: the size of a bpe vocabulary, the only kind that
    has a choice; config.DEFAULT_BPE_VOCAB_SIZE when None)."""
    check_tokenizer_settings(kind, vocab_size)
    texts = [texts] if isinstance(texts, str) else texts
    if kind == "char":
        return CharTokenizer.from_texts(texts)
    if kind == "byte":
        return byte_tokenizer()
    return train_bpe(texts, vocab_size or DEFAULT_BPE_VOCAB_SIZE)


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer a tokenizer.json holds: blu's own char format, or a native Hugging Face
    `tokenizers` file (byte and bpe)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise BluError(f"tokenizer.json is not valid JSON ({error})") from None
    if isinstance(data, dict) and data.get("type") == "char":
        return CharTokenizer.from_dict(data)
    if isinstance(data, dict) and data.get("type") == "hf":
        return PretrainedTokenizer.from_dict(data)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return from_native_json(text)
    raise BluError("tokenizer.json is not a blu tokenizer this version can read")
