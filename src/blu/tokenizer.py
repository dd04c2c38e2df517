"""Tokenizers: one small interface, chosen by what tokenizer.json holds.

Every tokenizer turns text into ids and back, encodes a whole corpus into a
numpy array, decodes a stream of ids incrementally (a character may span
tokens), says how many bytes of text each token of an encoded text stands for
(for bits per byte), and which ids generation must never emit or stops at.
`byte` and `bpe` are in bytelevel.py; this file holds the interface and:

`char`: one token per Unicode character of the training text. Token 0 is
reserved for `<unk>`, which stands for any character the training text did not
contain. The policy for such characters:
- in a prompt they are dropped (the model never learned an embedding for
  `<unk>`, so feeding it would be noise) and the caller tells the user which;
- when evaluating another file they are kept as `<unk>` and scored, so the
  loss honestly includes the model's failure to predict them.
"""

from abc import ABC, abstractmethod
import json

import numpy as np

from .errors import BluError

UNK = "<unk>"
KINDS = ("char", "byte", "bpe")
# The defaults come from BENCHMARKS.md ("Tokenizers on tiny Shakespeare"). In 150 s on a 2-core
# CPU, BPE of 512 or 1,024 tokens reaches 2.15 bits per byte where char and byte reach 2.27 and
# 4,096 reaches 2.20; 1,024 ties 512 and packs 20% more text per token: bpe for --data. But in the
# 2,000 steps of a plain `blu train`, BPE makes 20 passes over tiny Shakespeare's 411K tokens and
# overfits (best 2.22 at step 400) where char goes on to 2.15: char for tiny Shakespeare.
DEFAULT_KIND = "bpe"
DEFAULT_KIND_SHAKESPEARE = "char"
DEFAULT_BPE_VOCAB_SIZE = 1024


class Tokenizer(ABC):
    """What the rest of blu may ask of a tokenizer."""

    kind: str
    vocab_size: int
    unk_id: int | None = None  # stands for unknown text; never generated, dropped from prompts
    end_id: int | None = None  # the end-of-text token after each document; generation stops at it

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    @abstractmethod
    def encode_array(self, text: str) -> tuple[np.ndarray, int]:
        """Token ids of `text` as the smallest unsigned dtype that holds them, and how many
        characters were unknown (scored as `unk_id`)."""

    @abstractmethod
    def byte_lengths(self, text: str, ids: np.ndarray) -> np.ndarray:
        """For `ids`, the encoding of `text`: how many UTF-8 bytes of it each token stands for
        (an unknown character: its own bytes; the end-of-text token: 0)."""

    @abstractmethod
    def decode(self, ids) -> str:
        """The text of `ids`."""

    @abstractmethod
    def stream_decoder(self) -> "StreamDecoder":
        """A decoder fed one id at a time that returns only whole characters."""

    @abstractmethod
    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` the vocabulary cannot encode (dropped from prompts)."""

    @abstractmethod
    def start_ids(self) -> list[int]:
        """What generation starts after when the prompt is empty."""

    @abstractmethod
    def to_json(self) -> str:
        """What tokenizer.json holds."""

    @property
    def dtype(self):
        """The smallest unsigned integer type that holds every token id."""
        return np.uint8 if self.vocab_size <= 256 else np.uint16 if self.vocab_size <= 65536 else np.uint32


class StreamDecoder:
    """Decodes ids one at a time; `feed` returns the text that is complete so far."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def feed(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def flush(self) -> str:
        return ""


class CharTokenizer(Tokenizer):
    kind = "char"
    unk_id = 0

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise BluError("tokenizer vocabulary must be distinct single characters")
        self.chars = sorted(chars)
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}
        # Sorted code points let numpy encode a whole corpus without a Python loop.
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    @classmethod
    def from_texts(cls, texts) -> "CharTokenizer":
        """The characters of an iterable of texts, each seen once."""
        codes = set()
        for text in texts:
            codes.update(np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)).tolist())
        return cls(chr(c) for c in codes)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1  # + <unk>

    def encode_array(self, text: str) -> tuple[np.ndarray, int]:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if len(self._codepoints) == 0:
            return np.zeros(len(codes), dtype=self.dtype), len(codes)
        where = np.searchsorted(self._codepoints, codes)
        clipped = np.minimum(where, len(self._codepoints) - 1)
        known = self._codepoints[clipped] == codes
        ids = np.where(known, clipped + 1, 0).astype(self.dtype)
        return ids, int((~known).sum())

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in text]

    def byte_lengths(self, text: str, ids: np.ndarray) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one token per character
        return 1 + (codes >= 0x80).astype(np.int64) + (codes >= 0x800) + (codes >= 0x10000)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "" for i in ids)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)  # every token is a whole character

    def start_ids(self) -> list[int]:
        # There is no beginning-of-text token: start after a newline, like a new paragraph.
        return [self.stoi.get("\n", 1)]

    def to_json(self) -> str:
        return json.dumps({"type": "char", "unk_token": UNK, "chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if not isinstance(data.get("chars"), str):
            raise BluError("tokenizer.json is not a valid blu tokenizer (its chars are missing)")
        return cls(data["chars"])


def check_tokenizer_settings(kind: str, vocab_size: int | None) -> None:
    """Refuse a kind or vocabulary size build_tokenizer cannot make, before any text is read."""
    if kind not in KINDS:
        raise BluError(f"tokenizer must be one of {', '.join(KINDS)}, got {kind!r}")
    if vocab_size is not None and kind != "bpe":
        raise BluError(f"vocab-size is for --tokenizer bpe; a {kind} vocabulary comes from what it is")
    if vocab_size is not None and not 258 <= vocab_size <= 1 << 20:
        raise BluError(f"vocab-size for bpe must be between 258 (the 256 bytes, one merge, end-of-text) "
                       f"and {1 << 20}, got {vocab_size}")


def build_tokenizer(kind: str, texts, vocab_size: int | None = None) -> Tokenizer:
    """A new tokenizer of `kind` whose vocabulary comes from the training text, a str or an
    iterable of str read once (`vocab_size`: the size of a bpe vocabulary, the only kind that
    has a choice)."""
    from . import bytelevel

    check_tokenizer_settings(kind, vocab_size)
    texts = [texts] if isinstance(texts, str) else texts
    if kind == "char":
        return CharTokenizer.from_texts(texts)
    if kind == "byte":
        return bytelevel.byte_tokenizer()
    return bytelevel.train_bpe(texts, vocab_size or DEFAULT_BPE_VOCAB_SIZE)


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer a tokenizer.json holds: blu's own char format, or a native Hugging Face
    `tokenizers` file (byte and bpe)."""
    from . import bytelevel

    try:
        data = json.loads(text)
    except ValueError as error:
        raise BluError(f"tokenizer.json is not valid JSON ({error})") from None
    if isinstance(data, dict) and data.get("type") == "char":
        return CharTokenizer.from_dict(data)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return bytelevel.from_native_json(text)
    raise BluError("tokenizer.json is not a blu tokenizer this version can read")
