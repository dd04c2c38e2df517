"""Character-level tokenizer: one token per Unicode character of the training text.

Token 0 is reserved for `<unk>`, which stands for any character the training
text did not contain. The policy for such characters:
- in a prompt they are dropped (the model never learned an embedding for
  `<unk>`, so feeding it would be noise) and the caller tells the user which;
- when evaluating another file they are kept as `<unk>` and scored, so the
  loss honestly includes the model's failure to predict them.
"""

import json

import numpy as np

from .errors import BluError

UNK = "<unk>"


class CharTokenizer:
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

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1  # + <unk>

    @property
    def dtype(self):
        """The smallest unsigned integer type that holds every token id."""
        return np.uint8 if self.vocab_size <= 256 else np.uint16 if self.vocab_size <= 65536 else np.uint32

    def encode_array(self, text: str) -> tuple[np.ndarray, int]:
        """Token ids for `text` with unknown characters as <unk> (0), and how many there were."""
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

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "" for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "unk_token": UNK, "chars": "".join(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        try:
            data = json.loads(text)
            if data.get("type") != "char" or not isinstance(data.get("chars"), str):
                raise ValueError("not a blu char tokenizer")
        except (ValueError, AttributeError) as error:
            raise BluError(f"tokenizer.json is not a valid blu tokenizer ({error})") from None
        return cls(data["chars"])
