"""`char`: one token per Unicode character of the training text. Token 0 is
reserved for `<unk>`, which stands for any character the training text did not
contain. The policy for such characters:
- in a prompt they are dropped (the model never learned an embedding for
  `<unk>`, so feeding it would be noise) and the caller tells the user which;
- when evaluating another file they are kept as `<unk>` and scored, so the
  loss honestly includes the model's failure to predict them.
"""

import json

import numpy as np

from ..errors import BluError
from .base import StreamDecoder, Tokenizer

UNK = "<unk>"


class CharTokenizer(Tokenizer):
    kind = "char"
    unk_id = 0

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise BluError("tokenizer vocabulary must be distinct single characters")
        self.chars = sorted(chars)
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}
        # surrogatepass: a tokenizer.json may hold a lone surrogate, which still has bytes to report
        self.token_bytes = [b""] + [c.encode("utf-8", "surrogatepass") for c in self.chars]
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
