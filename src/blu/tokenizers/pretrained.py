"""`hf`: a pretrained checkpoint's own tokenizer, used exactly as it was published.

A Hugging Face folder's tokenizer.json is loaded by the `tokenizers` library as it is, whatever
its normalizer, pre-tokenizer, byte fallback and special tokens, so that its ids are the ones the
model was trained on. tokenizer_config.json and generation_config.json add what tokenizer.json
does not say: the start-of-text token and whether it begins every text, the end-of-text token,
every id generation stops at, and the chat template.

blu keeps all of it in one tokenizer.json of its own, {"type": "hf", "tokenizer": <the original
file, unchanged>, ...the settings}, from which an export writes the original files back.

Generation streams text and evaluation counts bits per byte from the bytes each token stands
for, worked out here from the vocabulary (GPT-2's byte map for byte-level BPE; `▁` for a space
and `<0xNN>` for a raw byte in SentencePiece-style vocabularies) and checked against the
library's own decoding of every token at load: a tokenizer whose bytes cannot be told exactly
is refused rather than scored wrongly.
"""

import json
from pathlib import Path
import re

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from ..errors import BluError
from .base import StreamDecoder, Tokenizer, Utf8StreamDecoder
from .bytelevel import gpt2_byte_map

SENTENCEPIECE_SPACE = "\u2581"  # "▁", SentencePiece's sign for a space
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a byte-fallback token


class PretrainedTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, original: dict, bos_id: int | None, add_bos: bool, end_id: int | None,
                 stop_ids: list[int], chat_template: str | None):
        try:
            self.hf = HFTokenizer.from_str(json.dumps(original))
        except Exception as error:  # tokenizers raises its own exception type for a bad file
            raise BluError(f"tokenizer.json is not a valid tokenizers file ({str(error)[:120]})") from None
        self.hf.encode_special_tokens = True  # a special token's text typed in a prompt or a corpus stays text
        self.original, self.bos_id, self.add_bos = original, bos_id, add_bos
        self.end_id, self.chat_template = end_id, chat_template
        self._stop_ids = sorted(set(stop_ids) | ({end_id} if end_id is not None else set()))
        for name, index in (("bos", bos_id), ("eos", end_id), *(("stop", i) for i in self.stop_ids)):
            if index is not None and not 0 <= index < self.vocab_size:
                raise BluError(f"tokenizer: the {name} id {index} is outside the vocabulary of {self.vocab_size}")
        model = original.get("model", {})
        unk = model.get("unk_token")
        self.unk_id = self.hf.token_to_id(unk) if unk and not model.get("byte_fallback") else None
        self.strips_first_space = _strips_first_space(original.get("decoder"))
        self.token_bytes = _token_bytes(self.hf, original)
        self.byte_lengths_by_id = np.array([len(b) for b in self.token_bytes], dtype=np.int64)

    @classmethod
    def from_folder(cls, folder) -> "PretrainedTokenizer":
        """The tokenizer of a Hugging Face model folder (tokenizer.json and, where present,
        tokenizer_config.json, special_tokens_map.json and generation_config.json)."""
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise BluError(f"{folder} has no tokenizer.json (a slow-only tokenizer such as tokenizer.model "
                           "alone is not supported)")
        original = _json_file(folder / "tokenizer.json")
        config = _json_file(folder / "tokenizer_config.json", {})
        special = {**_json_file(folder / "special_tokens_map.json", {}), **config}
        generation = _json_file(folder / "generation_config.json", {})
        hf = HFTokenizer.from_str(json.dumps(original))

        def token_id(name):
            token = special.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            return hf.token_to_id(token) if isinstance(token, str) else None

        bos_id, end_id = token_id("bos_token"), token_id("eos_token")
        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"]) and bos_id is not None
        else:  # what the file's own post-processor does, as transformers' fast tokenizer would
            add_bos = bos_id is not None and hf.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
        stops = generation.get("eos_token_id", [])
        stops = [stops] if isinstance(stops, int) else [i for i in stops if isinstance(i, int)]
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(original, bos_id, add_bos, end_id, stops, template if isinstance(template, str) else None)

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainedTokenizer":
        """What `to_json` wrote."""
        try:
            return cls(data["tokenizer"], data["bos_id"], bool(data["add_bos"]), data["end_id"],
                       list(data["stop_ids"]), data.get("chat_template"))
        except (KeyError, TypeError) as error:
            raise BluError(f"tokenizer.json of kind hf is incomplete ({error!r})") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        return self._stop_ids

    def encode(self, text: str) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if self.add_bos else ids

    def encode_array(self, text: str) -> tuple[np.ndarray, int]:
        ids = np.array(self.encode(text), dtype=self.dtype)
        return ids, int((ids == self.unk_id).sum()) if self.unk_id is not None else 0

    def byte_lengths(self, text: str, ids: np.ndarray) -> np.ndarray:
        lengths = self.byte_lengths_by_id[ids].copy()
        extra = int(lengths.sum()) - len(text.encode("utf-8"))
        first = int(np.flatnonzero(lengths)[0]) if extra else 0
        # A SentencePiece normalizer (or Metaspace) puts a space before the text that the text does not hold.
        if extra == 1 and self.token_bytes[ids[first]][:1] == b" ":
            lengths[first] -= 1
        elif extra:
            raise BluError(f"this tokenizer's normalizer changes the text ({extra:+} bytes in {text[:40]!r}...): "
                           "its bits per byte cannot be counted")
        return lengths

    def decode(self, ids) -> str:
        text = b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if self.strips_first_space and text.startswith(" ") else text

    def stream_decoder(self) -> StreamDecoder:
        return Utf8StreamDecoder(self)

    def unknown_chars(self, text: str) -> list[str]:
        if self.unk_id is None:
            return []
        return [c for c in dict.fromkeys(text) if self.unk_id in self.hf.encode(c, add_special_tokens=False).ids]

    def start_ids(self) -> list[int]:
        starts = self.bos_id if self.bos_id is not None else self.end_id
        return [starts] if starts is not None else []

    def to_json(self) -> str:
        return json.dumps({"type": "hf", "tokenizer": self.original, "bos_id": self.bos_id, "add_bos": self.add_bos,
                           "end_id": self.end_id, "stop_ids": self.stop_ids, "chat_template": self.chat_template},
                          ensure_ascii=False)



def _json_file(path: Path, missing=None):
    if not path.is_file():
        if missing is None:
            raise BluError(f"{path} is missing")
        return missing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BluError(f"{path} is not valid JSON ({error})") from None


def _decoders(decoder) -> list[dict]:
    if not isinstance(decoder, dict):
        return []
    return [d for d in decoder.get("decoders", []) if isinstance(d, dict)] if decoder.get("type") == "Sequence" else [decoder]


def _strips_first_space(decoder) -> bool:
    """Whether decoding drops the space a SentencePiece normalizer or Metaspace put before the text."""
    for step in _decoders(decoder):
        if step.get("type") == "Strip" and step.get("content") == " " and step.get("start", 0) >= 1:
            return True
        if step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") != "never" \
                and step.get("add_prefix_space", True):
            return True
    return False


def _token_bytes(hf: HFTokenizer, original: dict) -> list[bytes]:
    """The bytes each id stands for (special tokens: none), checked against `tokenizers`' own
    decoding of each token that is text on its own."""
    steps = {d.get("type") for d in _decoders(original.get("decoder"))}
    byte_level = "ByteLevel" in steps
    byte_of = {char: byte for byte, char in gpt2_byte_map().items()}
    special = {t["id"] for t in original.get("added_tokens", []) if t.get("special")}
    added = {t["id"]: t["content"] for t in original.get("added_tokens", [])}
    table = []
    for index in range(hf.get_vocab_size(with_added_tokens=True)):
        token = hf.id_to_token(index)
        if index in special or token is None:
            table.append(b"")
        elif index in added:
            table.append(added[index].encode("utf-8"))
        elif byte_level:
            if any(c not in byte_of for c in token):
                raise BluError(f"tokenizer.json: the byte-level token {token!r} (id {index}) is not made of bytes")
            table.append(bytes(byte_of[c] for c in token))
        elif match := BYTE_PIECE.fullmatch(token):
            table.append(bytes([int(match.group(1), 16)]))
        else:
            table.append(token.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8"))
    _check_against_decoder(hf, table, special)
    return table


def _check_against_decoder(hf: HFTokenizer, table: list[bytes], special: set[int]) -> None:
    """Each token that is whole characters, decoded by `tokenizers` after a plain letter token
    (so that decoders which join or strip tokens show it), must give the bytes of the table."""
    letter = next((i for i, raw in enumerate(table) if raw.isalpha() and raw.isascii() and i not in special), None)
    if letter is None:
        raise BluError("tokenizer.json has no plain letter token to check its decoder with: it is not supported")
    checked = []
    for index, raw in enumerate(table):
        try:
            checked.append((index, (table[letter] + raw).decode("utf-8")))
        except UnicodeDecodeError:
            continue  # part of a character: the tests check these in whole texts
    theirs = hf.decode_batch([[letter, index] for index, _ in checked], skip_special_tokens=True)
    for (index, text), decoded in zip(checked, theirs):
        if decoded != text:
            raise BluError(f"blu cannot tell the bytes of token {index} of this tokenizer ({text!r} here, "
                           f"{decoded!r} by its decoder): it is not supported")
