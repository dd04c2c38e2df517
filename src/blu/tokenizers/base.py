"""The interface every tokenizer has, and the stream decoder that generation reads text from.

Every tokenizer turns text into ids and back, encodes a whole corpus into a numpy array,
decodes a stream of ids incrementally (a character may span tokens), gives the bytes each id
stands for (a token of a byte-level kind may hold part of a character: log-probabilities
report its own bytes, not the U+FFFD its text alone decodes to), says how many bytes of text
each token of an encoded text stands for (for bits per byte), and which ids generation must
never emit or stops at. The kinds are in char.py and bytelevel.py; __init__.py picks one
by what tokenizer.json holds.
"""

from abc import ABC, abstractmethod
import codecs

import numpy as np


class Tokenizer(ABC):
    """What the rest of blu may ask of a tokenizer."""

    kind: str
    vocab_size: int
    unk_id: int | None = None  # stands for unknown text; never generated, dropped from prompts
    end_id: int | None = None  # the end-of-text token after each document; generation stops at it
    # The Jinja chat template conversations are rendered with (chat_kinds.py): an imported
    # checkpoint's, or the one a run of blu's own kinds got for fine-tuning on conversations.
    chat_template: str | None = None
    # The UTF-8 bytes each id stands for, indexed by id: b"" for <unk> and end-of-text, which stand
    # for no text; one byte of a character for a byte token. Every kind fills it when it is made.
    token_bytes: list[bytes]

    @property
    def stop_ids(self) -> list[int]:
        """Every id that ends generated text: the end-of-text token (an imported tokenizer adds
        the ids its checkpoint's generation_config.json lists)."""
        return [] if self.end_id is None else [self.end_id]

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


class Utf8StreamDecoder(StreamDecoder):
    """A token's bytes in, whole characters out: a character split across tokens waits for its
    last byte; bytes that can never form a character come out as U+FFFD, as `decode` gives them."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self.utf8.decode(self.tokenizer.token_bytes[token])

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)
