"""Reading a corpus, streamed: a text file, or documents in a folder of text files, JSONL,
Parquet and gzip of the text formats, read strictly a block at a time; the manifest that
identifies the files.

Nothing here holds a corpus in memory: documents arrive in pieces of at most PIECE_CHARS
characters, cut where GPT-2's pre-tokenizer always splits (see `pieces_of`), so encoding the
pieces gives the ids of encoding each document whole. A document is read whole only where
its format stores it whole (a JSONL line, a Parquet cell).
"""

from dataclasses import dataclass, field
import gzip
import hashlib
import json
from pathlib import Path
import string
from typing import Iterator

from ..errors import BluError
from .text import decoded_blocks, default_corpus_path, not_utf8

DOCUMENT_FORMATS = (".jsonl", ".parquet", ".gz")  # several documents per file (a .gz: of either, or of text files)
PIECE_CHARS = 1 << 20  # documents reach the tokenizer in pieces of about this many characters
READ_BYTES = 1 << 20
_SAFE_BEFORE_CUT = set(string.ascii_letters + string.digits + string.punctuation)


def is_document_corpus(path: Path) -> bool:
    """Whether `path` holds several documents (a folder, JSONL, Parquet, gzip) rather than one text."""
    return path.is_dir() or path.name.endswith(DOCUMENT_FORMATS)


@dataclass
class Source:
    """The files one --data (or --val-data) path names, in a fixed order, and how to read them.
    `path` None is tiny Shakespeare."""

    path: Path | None
    ext: list[str] | None = None
    text_field: str = "text"
    skip_bad: bool = False
    root: Path = field(init=False)  # the path, or tiny Shakespeare's in the cache
    documents: bool = field(init=False)  # several documents, not one text
    files: list[Path] = field(init=False)  # every file to read, in order

    def __post_init__(self):
        root = self.path if self.path is not None else default_corpus_path()
        self.documents = is_document_corpus(root)
        if not root.exists():
            raise BluError(f"{root}: no such file{' or folder' if self.path is not None else ''}")
        if root.is_dir():
            hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
            self.files = sorted(p for p in root.rglob("*") if p.is_file() and not hidden(p)
                                and (not self.ext or p.name.endswith(tuple(self.ext))))
            if not self.files:
                raise BluError(f"{root} holds no files{' ending in ' + ', '.join(self.ext) if self.ext else ''}")
        else:
            self.files = [root]
        self.root = root

    def name_of(self, file: Path) -> str:
        return str(file.relative_to(self.root)) if self.root.is_dir() else file.name

    def manifest(self) -> list[dict]:
        """{"path" (relative to the corpus), "bytes", "sha256"} of each file, read in blocks."""
        entries = []
        for file in self.files:
            digest, size = hashlib.sha256(), 0
            try:
                with open(file, "rb") as stream:
                    while block := stream.read(READ_BYTES):
                        digest.update(block)
                        size += len(block)
            except OSError as error:
                raise BluError(f"{file}: cannot read ({error.strerror or error})") from None
            entries.append({"path": self.name_of(file), "bytes": size, "sha256": digest.hexdigest()})
        if not self.documents and entries[0]["bytes"] == 0:
            raise BluError(f"{self.files[0]} is empty")
        return entries

    def read(self, file: Path) -> Iterator[tuple[str, bool]]:
        """(piece, ends its document) of every document of `file`, read strictly: a bad file
        raises a one-line BluError naming it (perhaps after some of its pieces)."""
        name = file.name
        opener = open
        if name.endswith(".gz"):
            name, opener = name[: -len(".gz")], gzip.open
        try:
            if name.endswith(".parquet"):
                for document in _parquet_documents(file, self.text_field):
                    yield from pieces_of([document])
                return
            with opener(file, "rb") as stream:
                if name.endswith(".jsonl"):
                    for document in _jsonl_documents(file, stream, self.text_field):
                        yield from pieces_of([document])
                else:
                    yield from pieces_of(decoded_blocks(file, stream, READ_BYTES))
        except (OSError, EOFError) as error:  # gzip reports a bad stream this way
            if opener is gzip.open and not isinstance(error, FileNotFoundError):
                raise BluError(f"{file} is not valid gzip ({error})") from None
            raise BluError(f"{file}: cannot read ({getattr(error, 'strerror', None) or error})") from None


def pieces_of(texts, size: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
    """One document given as consecutive texts, as (piece, is its last) of at most `size`
    characters. A piece ends at the last place in its reach just before a space or newline that
    follows a letter, digit or ASCII punctuation: GPT-2's pre-tokenization regex always splits
    there (no pattern spans non-whitespace then whitespace), so byte-level BPE ids do not
    depend on the cuts. A run of `size` characters with no such place is cut where it ends."""
    held, carry = None, ""  # a piece is held back until we know whether it is the last
    for text in texts:
        carry += text  # carry is shorter than `size`: never a copy of a whole long document
        start = 0
        while len(carry) - start >= size:
            cut = _last_safe_cut(carry, start, start + size)
            if held is not None:
                yield held, False
            held, start = carry[start:cut], cut
        carry = carry[start:]
    if carry:
        if held is not None:
            yield held, False
        held = carry
    if held is not None:
        yield held, True


def _last_safe_cut(text: str, start: int, end: int) -> int:
    cut = end
    while True:
        cut = max(text.rfind(" ", start, cut), text.rfind("\n", start, cut))
        if cut <= start:
            return end
        if text[cut - 1] in _SAFE_BEFORE_CUT or text[cut - 1].isalnum():
            return cut


def _jsonl_documents(file: Path, stream, text_field: str) -> Iterator[str]:
    offset = 0
    for number, line in enumerate(stream, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise not_utf8(file, line[error.start], offset + error.start) from None
        offset += len(line)
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            raise BluError(f"{file}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise BluError(f"{file}: line {number} has no string field {text_field!r} (--text-field names another)")
        document = record[text_field]
        del line, text, record  # a long document is held once while it is read, not three times
        if document:
            yield document


def _parquet_documents(file: Path, text_field: str) -> Iterator[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
        schema = table.schema_arrow
        if text_field not in schema.names:
            raise BluError(f"{file} has no column {text_field!r} (--text-field names another; it has "
                           f"{', '.join(schema.names)})")
        if not (pyarrow.types.is_string(schema.field(text_field).type) or
                pyarrow.types.is_large_string(schema.field(text_field).type)):
            raise BluError(f"{file}: column {text_field!r} is not text")
        for group in range(table.num_row_groups):  # a row group at a time: never the whole file's columns
            yield from (d for d in table.read_row_group(group, columns=[text_field]).column(0).to_pylist() if d)
    except (pyarrow.ArrowException, OSError) as error:
        raise BluError(f"{file} is not a readable Parquet file ({str(error).splitlines()[0][:120]})") from None
