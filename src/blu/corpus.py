"""Corpora, streamed: a text file, or documents in a folder of text files, JSONL, Parquet and
gzip of the text formats, read strictly a piece at a time; the manifest that identifies them;
the split into training and validation text, decided before tokenizing.

Nothing here holds a corpus in memory: documents arrive in pieces of about PIECE_CHARS
characters, cut where GPT-2's pre-tokenizer always splits (see `pieces_of`), so encoding the
pieces gives the ids of encoding each document whole.

A plain text file is one document whose final range (data.split_point) is for validation; a
corpus of documents is split by a seeded hash of each document (`choose_validation`). The
split is found by one pass over the corpus (`Corpus.scan`) and kept as a `Plan`.
"""

from array import array
from dataclasses import dataclass, field
import gzip
import hashlib
import json
from pathlib import Path
import string
from typing import Iterator, NamedTuple

from .data import MAX_VALIDATION_CHARS, default_corpus_path, sha256_of, split_point
from .errors import BluError

DOCUMENT_FORMATS = (".jsonl", ".jsonl.gz", ".parquet")  # several documents per file
PIECE_CHARS = 1 << 20  # documents reach the tokenizer in pieces of about this many characters
READ_BYTES = 1 << 20
_SAFE_BEFORE_CUT = set(string.ascii_letters + string.digits + string.punctuation)


class Piece(NamedTuple):
    """A piece of a document's text, in order."""

    text: str
    validation: bool  # part of the validation text
    ends: bool  # an end-of-text token follows it (it ends a document of a corpus, or the validation text)


def is_document_corpus(path: Path) -> bool:
    """Whether `path` holds several documents (a folder, JSONL, Parquet, gzip) rather than one text."""
    return path.is_dir() or path.name.endswith(DOCUMENT_FORMATS + (".gz",))


@dataclass
class Source:
    """The files one --data (or --val-data) path names, in a fixed order, and how to read them.
    `path` None is tiny Shakespeare."""

    path: Path | None
    ext: list[str] | None = None
    text_field: str = "text"
    skip_bad: bool = False
    files: list[Path] = field(default_factory=list)

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
                    yield from pieces_of(_decoded(file, stream))
        except (OSError, EOFError) as error:  # gzip reports a bad stream this way
            if opener is gzip.open and not isinstance(error, FileNotFoundError):
                raise BluError(f"{file} is not valid gzip ({error})") from None
            raise BluError(f"{file}: cannot read ({getattr(error, 'strerror', None) or error})") from None


def _decoded(file: Path, stream) -> Iterator[str]:
    """The text of a binary stream, in blocks, as strict UTF-8: the byte offset of a bad byte is
    reported, as is a NUL byte (a binary file)."""
    pending, offset = b"", 0
    while block := stream.read(READ_BYTES):
        data = pending + block
        if b"\x00" in data:
            raise BluError(f"{file} looks binary (NUL byte at offset {offset + data.index(0)}); blu trains on text")
        try:
            text, pending = data.decode("utf-8"), b""
        except UnicodeDecodeError as error:
            if error.end != len(data) or error.reason != "unexpected end of data":
                raise BluError(f"{file} is not UTF-8: invalid byte 0x{data[error.start]:02x} at offset "
                               f"{offset + error.start}") from None
            text, pending = data[: error.start].decode("utf-8"), data[error.start :]  # a character cut by the block
        offset += len(data) - len(pending)
        yield text
    if pending:
        raise BluError(f"{file} is not UTF-8: invalid byte 0x{pending[0]:02x} at offset {offset}")


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
            raise BluError(f"{file} is not UTF-8: invalid byte 0x{line[error.start]:02x} at offset "
                           f"{offset + error.start}") from None
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


def validation_score(document: str, seed: int) -> float:
    """A number in [0, 1) fixed by the document and the seed alone."""
    return _score(_score_hash(seed, document))


def _score_hash(seed: int, text: str = ""):
    return hashlib.sha256(f"{seed}:".encode() + text.encode("utf-8"))


def _score(digest) -> float:
    return int.from_bytes(digest.digest()[:8], "little") / 2**64


def choose_validation(scores, sizes, fraction: float) -> list[int]:
    """The documents (indices) for validation: those whose seeded hash is below `fraction`, so
    adding documents never moves one already placed. At least one document is for validation
    (the lowest hash), and at least one for training; the validation text is capped at
    MAX_VALIDATION_CHARS by giving back the highest-hash documents."""
    if len(scores) < 2:
        raise BluError("a corpus of documents needs at least two: one to train on, one to validate")
    chosen = sorted((s, i) for i, s in enumerate(scores) if s < fraction) or [min((s, i) for i, s in enumerate(scores))]
    if len(chosen) == len(scores):
        chosen = chosen[:-1]
    kept, size = [], 0
    for _, index in chosen:  # lowest hash first
        if size and size + sizes[index] > MAX_VALIDATION_CHARS:
            break
        kept.append(index)
        size += sizes[index]
    return sorted(kept)


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training and validation documents of a list held in memory (see choose_validation)."""
    kept = set(choose_validation([validation_score(d, seed) for d in documents], [len(d) for d in documents], fraction))
    return [d for i, d in enumerate(documents) if i not in kept], [d for i, d in enumerate(documents) if i in kept]


@dataclass
class Plan:
    """What one pass over a corpus found: how to split it, and what it holds. Saved as JSON."""

    validation: list[int] | None  # the documents for validation (None: from_char, or all of --val-data)
    from_char: int | None  # one text file: where its validation range starts
    chars: list[int]  # characters of text, per source
    text_bytes: int  # UTF-8 bytes of text, every source
    documents: int  # documents of the training source
    skipped: list[str]  # "file: reason" of each bad file left out (--skip-bad-files)
    skipped_files: list[str]  # their names


@dataclass
class Corpus:
    """The text a run trains and validates on: `train` (validation cut out of it by `fraction`
    and `seed`), or all of `train` and all of `held_out`."""

    train: Source
    held_out: Source | None
    fraction: float
    seed: int

    def sources(self) -> list[Source]:
        return [self.train] + ([self.held_out] if self.held_out else [])

    def manifests(self) -> list[list[dict]]:
        return [source.manifest() for source in self.sources()]

    def key_material(self, manifests) -> dict:
        """Everything the split depends on."""
        return {"manifests": manifests, "fraction": self.fraction, "seed": self.seed,
                "sources": [[s.documents, s.ext, s.text_field, s.skip_bad] for s in self.sources()]}

    def _documents(self, source: Source, skipped_files=()) -> Iterator[tuple[str, bool]]:
        for file in source.files:
            if source.name_of(file) not in skipped_files:
                yield from source.read(file)

    def scan(self) -> Plan:
        """One pass over every source: check every file, count, and choose the validation text."""
        scores, sizes, chars, text_bytes, skipped, skipped_files = array("d"), array("q"), [], 0, [], []
        for number, source in enumerate(self.sources()):
            chars.append(0)
            for file in source.files:
                file_scores, file_sizes, file_bytes = array("d"), array("q"), 0
                digest, size = _score_hash(self.seed), 0
                try:
                    for piece, last in source.read(file):
                        data = piece.encode("utf-8")
                        digest.update(data)
                        size += len(piece)
                        file_bytes += len(data)
                        if last:
                            file_scores.append(_score(digest))
                            file_sizes.append(size)
                            digest, size = _score_hash(self.seed), 0
                except BluError as error:
                    if not source.skip_bad:
                        raise BluError(f"{error} (--skip-bad-files leaves such files out)") from None
                    skipped.append(str(error))
                    skipped_files.append(source.name_of(file))
                    continue
                text_bytes += file_bytes
                chars[number] += sum(file_sizes)
                if number == 0:
                    scores.extend(file_scores)
                    sizes.extend(file_sizes)
        if not sizes:
            raise BluError(f"{self.train.root} holds no text")
        validation, from_char = None, None
        if self.held_out is None and self.train.documents:
            validation = choose_validation(scores, sizes, self.fraction)
        elif self.held_out is None:
            from_char = split_point(chars[0], 1, str(self.train.root), self.fraction)
        return Plan(validation, from_char, chars, text_bytes, len(sizes), skipped, skipped_files)

    def pieces(self, plan: Plan, train: bool = True, validation: bool = True) -> Iterator[Piece]:
        """The text in order, as pieces marked training or validation (only the parts asked for)."""
        chosen = set(plan.validation or ())
        for number, source in enumerate(self.sources()):
            is_held_out = number == 1
            if not (validation if is_held_out else train or validation):
                continue
            document, position = 0, 0
            for text, last in self._documents(source, plan.skipped_files):
                if is_held_out:
                    yield Piece(text, True, last)
                elif plan.from_char is not None:  # one text file: its training range, then its validation range
                    cut = max(0, min(len(text), plan.from_char - position))
                    position += len(text)
                    if cut and train:
                        yield Piece(text[:cut], False, False)
                    if cut < len(text) and validation:
                        yield Piece(text[cut:], True, last)
                else:
                    is_validation = document in chosen
                    if (validation if is_validation else train):
                        yield Piece(text, is_validation, last and source.documents)
                document += last

    def record(self, manifests, plan: Plan, validation_chars: int, validation_sha256: str) -> dict:
        """What config.json keeps under "data": where the text came from and which of it is validation."""
        def described(source: Source, manifest: list[dict], documents: int, chars: int) -> dict:
            if source.documents:
                return {"path": str(source.root.resolve()), "kind": "documents", "ext": source.ext,
                        "text_field": source.text_field, "skip_bad_files": source.skip_bad,
                        "files": [f for f in manifest if f["path"] not in plan.skipped_files], "documents": documents,
                        **({"skipped_files": plan.skipped_files} if plan.skipped_files else {})}
            return {"path": str(source.root.resolve()) if source.path is not None else None,
                    "sha256": manifest[0]["sha256"], "chars": chars}

        train = described(self.train, manifests[0], plan.documents, plan.chars[0])
        if self.held_out is not None:
            return {"path": train["path"], "kind": "explicit validation", "train": train,
                    "validation": described(self.held_out, manifests[1], 0, plan.chars[-1])}
        where = {"documents": len(plan.validation)} if plan.validation is not None else {"from_char": plan.from_char}
        return {**train, "val_fraction": self.fraction,
                "validation": {**where, "chars": validation_chars, "sha256": validation_sha256}}


def check_unchanged(record: dict, manifests: list[list[dict]], sources: list[Source]) -> None:
    """Refuse a corpus whose files differ from what a run recorded (config.json's "data")."""
    parts = [record["train"], record["validation"]] if record.get("kind") == "explicit validation" else [record]
    for part, manifest, source in zip(parts, manifests, sources):
        if part.get("kind") == "documents":
            if [f for f in manifest if f["path"] not in part.get("skipped_files", [])] != part["files"]:
                raise BluError(f"{source.root} has changed since this run was trained on it (its files differ from the manifest)")
        elif part.get("sha256") and manifest[0]["sha256"] != part["sha256"]:
            raise BluError(f"{source.root} has changed since this run was trained on it (SHA-256 differs)")


def read_documents(path, ext=None, text_field: str = "text", skip_bad: bool = False) -> list[str]:
    """Every document below `path`, whole, in order (for tests and small corpora: this one holds
    them all in memory)."""
    source = Source(Path(path), ext, text_field, skip_bad)
    documents, current = [], []
    for file in source.files:
        try:
            for piece, last in source.read(file):
                current.append(piece)
                if last:
                    documents.append("".join(current))
                    current = []
        except BluError as error:
            if not skip_bad:
                raise BluError(f"{error} (--skip-bad-files leaves such files out)") from None
            current = []
    return documents


def corpus_sha256(manifest: list[dict]) -> str:
    return sha256_of(json.dumps(manifest, sort_keys=True).encode())
