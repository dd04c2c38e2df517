"""Byte-level tokenizers: `byte` (the 256 UTF-8 bytes) and `bpe` (a byte-level BPE trained
on the training text with Hugging Face `tokenizers`), both with an end-of-text token.

Both are stored as a native `tokenizers` file (`tokenizers.Tokenizer.from_file` loads
tokenizer.json as it is): GPT-2's byte-to-character map and pre-tokenization regex, no
prefix space, all 256 bytes in the vocabulary (nothing is ever unknown), and
`<|endoftext|>` as the last id. A `byte` tokenizer is a BPE with no merges whose ids are
the byte values, so blu encodes it with numpy, and `tokenizers` gives the same ids.

The end-of-text token follows every document. It is never produced from text: the literal
`<|endoftext|>` in a prompt or a corpus is encoded as the characters it is made of, as are
ChatML's `<|im_start|>` and `<|im_end|>`, which a run fine-tuning on conversations gains after it
(chat_kinds.py; only its chat template's rendering makes them the tokens).
"""

import json

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..errors import BluError
from .base import StreamDecoder, Tokenizer, Utf8StreamDecoder

END_OF_TEXT = "<|endoftext|>"
# BPE trains on at most this much of the training text: about 13 s and 0.5 GB on 2 cores (BENCHMARKS.md).
MAX_TRAINING_CHARS = 100_000_000
CHUNK_CHARS = 1 << 20  # the training text reaches the trainer in pieces of this size


def gpt2_byte_map() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to
    themselves, the other 68 bytes to the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _bare_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> HFTokenizer:
    tokenizer = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    _configure(tokenizer)
    return tokenizer


def _configure(tokenizer: HFTokenizer) -> None:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])


def byte_tokenizer() -> "ByteLevelTokenizer":
    vocab = {char: byte for byte, char in gpt2_byte_map().items()}
    return ByteLevelTokenizer(_bare_tokenizer(vocab, []))


def train_bpe(texts, vocab_size: int) -> "ByteLevelTokenizer":
    """A byte-level BPE of `vocab_size` tokens (the 256 bytes, merges, end-of-text) trained on
    `texts` (an iterable of str: their first MAX_TRAINING_CHARS characters, each cut into
    pieces of at most CHUNK_CHARS). The same texts and size give a byte-identical tokenizer.json.
    (tokenizer.check_tokenizer_settings checks the size.)"""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(_bounded(texts, MAX_TRAINING_CHARS), trainer)
    _configure(tokenizer)  # end-of-text after the merges: the last id, as in GPT-2
    return ByteLevelTokenizer(tokenizer)


def _bounded(texts, limit: int):
    """The texts, each in pieces of at most CHUNK_CHARS, until `limit` characters have gone by."""
    for text in texts:
        for i in range(0, min(len(text), limit), CHUNK_CHARS):
            yield text[i : min(i + CHUNK_CHARS, limit)]
        limit -= len(text)
        if limit <= 0:
            return


class ByteLevelTokenizer(Tokenizer):
    """A byte-level BPE (`bpe`), or the bytes alone (`byte`: no merges)."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.hf.encode_special_tokens = True  # "<|endoftext|>" in text is text (not saved in the file: set on load)
        self.end_id = hf.token_to_id(END_OF_TEXT)
        if self.end_id is None:
            raise BluError(f"tokenizer.json has no {END_OF_TEXT} token")
        byte_of = {char: byte for byte, char in gpt2_byte_map().items()}
        vocab = hf.get_vocab(with_added_tokens=False)
        self.token_bytes = [b""] * hf.get_vocab_size()  # the bytes each id stands for; end-of-text: none
        for token, index in vocab.items():
            if any(char not in byte_of for char in token):
                raise BluError(f"tokenizer.json is not byte-level: token {token!r}")
            self.token_bytes[index] = bytes(byte_of[char] for char in token)
        self.kind = "byte" if all(len(b) <= 1 for b in self.token_bytes) else "bpe"
        if self.kind == "byte" and any(self.token_bytes[b] != bytes([b]) for b in range(256)):
            raise BluError("a byte tokenizer must give each byte its own value as its id")
        self.byte_lengths_by_id = np.array([len(b) for b in self.token_bytes], dtype=np.int64)
        self.fast = _tiktoken_encoding(self) if self.kind == "bpe" else None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text)[0].tolist()

    def encode_array(self, text: str) -> tuple[np.ndarray, int]:
        if self.kind == "byte":  # ids are the byte values
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(self.dtype), 0
        if self.fast is not None:
            return np.array(self.fast.encode_ordinary(text), dtype=self.dtype), 0
        return np.array(self.hf.encode(text, add_special_tokens=False).ids, dtype=self.dtype), 0

    def byte_lengths(self, text: str, ids: np.ndarray) -> np.ndarray:
        return self.byte_lengths_by_id[ids]

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return Utf8StreamDecoder(self)

    def unknown_chars(self, text: str) -> list[str]:
        return []  # every text is bytes

    def start_ids(self) -> list[int]:
        return [self.end_id]  # a text from nothing is a new document: it follows an end-of-text

    def to_json(self) -> str:
        return self.hf.to_str(pretty=True)


# GPT-2's pre-tokenization regex as tiktoken writes it (possessive, for speed): the same pieces as
# the ByteLevel pre-tokenizer's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _tiktoken_encoding(tokenizer: "ByteLevelTokenizer"):
    """The same merges as a tiktoken encoding, about 5x faster than `tokenizers` on one core
    (BENCHMARKS.md), or None without tiktoken or for merges it would apply differently.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; `tokenizers`
    merges the pair that comes first in its merge list. Taking each token's id as its rank,
    the two agree when every merge makes a new token and ids grow with the merge order, which
    this checks (a trained file always passes); tests check the ids on real text."""
    try:
        import tiktoken
    except ImportError:
        return None
    model = json.loads(tokenizer.hf.to_str())["model"]
    vocab, last = model["vocab"], -1
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        made = vocab.get(left + right)
        if made is None or made <= last:
            return None
        last = made
    # Special tokens (end-of-text, the ChatML markers a chat run gains) stand for no bytes: tiktoken never makes them.
    ranks = {token: index for index, token in enumerate(tokenizer.token_bytes) if token}
    return tiktoken.Encoding("blu", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})



def from_native_json(text: str) -> ByteLevelTokenizer:
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as error:  # tokenizers raises its own exception type for a bad file
        raise BluError(f"tokenizer.json is not a valid tokenizers file ({str(error)[:120]})") from None
    return ByteLevelTokenizer(hf)
