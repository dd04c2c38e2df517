"""Corpora of documents: a folder of text files, JSONL, Parquet and gzip of the text
formats, read strictly; the validation split by document; the manifest a run records.

A plain text file is one document and keeps data.py's split (the final range of its
text). Everything here is read into memory: streamed token shards are not built yet.
"""

from dataclasses import dataclass, field
import gzip
import hashlib
import json
from pathlib import Path

from .data import MAX_VALIDATION_CHARS, decode_text, load_text, sha256_of, split
from .errors import BluError

DOCUMENT_FORMATS = (".jsonl", ".jsonl.gz", ".parquet")  # several documents per file


@dataclass
class Corpus:
    """The documents of a `--data` path, in a fixed order, and what was read to get them."""

    documents: list[str]
    files: list[dict]  # the manifest: {"path" (relative to the corpus), "bytes", "sha256"} of each file read
    skipped: list[str] = field(default_factory=list)  # "path: reason" of each bad file left out (--skip-bad-files)


def is_document_corpus(path: Path) -> bool:
    """Whether `path` holds several documents (a folder, JSONL, Parquet, gzip) rather than one text."""
    return path.is_dir() or path.name.endswith(DOCUMENT_FORMATS + (".gz",))


def read_documents(path, ext: list[str] | None = None, text_field: str = "text", skip_bad: bool = False) -> Corpus:
    """Every document below `path`: a folder's files recursively in sorted order (only names
    ending in one of `ext`, if given; hidden files and folders left out), each a text file (one
    document), JSONL (one document per line, in its `text_field`), Parquet (the `text_field`
    column, read a row group at a time) or any of these gzipped. A bad file is refused with its
    name and the reason, or, with `skip_bad`, left out and listed."""
    root = Path(path)
    if not root.exists():
        raise BluError(f"{root}: no such file or folder")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".")
                       for part in p.relative_to(root).parts) and (not ext or p.name.endswith(tuple(ext))))
        if not files:
            raise BluError(f"{root} holds no files{' ending in ' + ', '.join(ext) if ext else ''}")
    else:
        files = [root]
    corpus = Corpus([], [])
    for file in files:
        name = str(file.relative_to(root)) if root.is_dir() else file.name
        try:
            data = file.read_bytes()
            documents = _documents_of(file, data, text_field)
        except BluError as error:
            if not skip_bad:
                raise BluError(f"{error} (--skip-bad-files leaves such files out)") from None
            corpus.skipped.append(str(error))
            continue
        except OSError as error:
            raise BluError(f"{file}: cannot read ({error.strerror or error})") from None
        corpus.documents += [d for d in documents if d]  # empty files and lines are fine: no document
        corpus.files.append({"path": name, "bytes": len(data), "sha256": sha256_of(data)})
    if not corpus.documents:
        raise BluError(f"{root} holds no text")
    return corpus


def _documents_of(file: Path, data: bytes, text_field: str) -> list[str]:
    name = file.name
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise BluError(f"{file} is not valid gzip ({error})") from None
        name = name[: -len(".gz")]
    if name.endswith(".parquet"):
        return _parquet_documents(file, text_field)
    text = decode_text(file, data)
    if name.endswith(".jsonl"):
        return _jsonl_documents(file, text, text_field)
    return [text]


def _jsonl_documents(file: Path, text: str, text_field: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise BluError(f"{file}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise BluError(f"{file}: line {number} has no string field {text_field!r} (--text-field names another)")
        documents.append(record[text_field])
    return documents


def _parquet_documents(file: Path, text_field: str) -> list[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
        if text_field not in table.schema_arrow.names:
            raise BluError(f"{file} has no column {text_field!r} (--text-field names another; it has "
                           f"{', '.join(table.schema_arrow.names)})")
        if not pyarrow.types.is_string(table.schema_arrow.field(text_field).type) and \
                not pyarrow.types.is_large_string(table.schema_arrow.field(text_field).type):
            raise BluError(f"{file}: column {text_field!r} is not text")
        documents = []
        for group in range(table.num_row_groups):  # a row group at a time: never the whole file's columns
            documents += [d for d in table.read_row_group(group, columns=[text_field]).column(0).to_pylist() if d]
        return documents
    except (pyarrow.ArrowException, OSError) as error:
        raise BluError(f"{file} is not a readable Parquet file ({str(error).splitlines()[0][:120]})") from None


def validation_score(document: str, seed: int) -> float:
    """A number in [0, 1) fixed by the document and the seed alone."""
    digest = hashlib.sha256(f"{seed}:".encode() + document.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training and validation documents: a document is for validation when its seeded hash is
    below `fraction`, so adding documents never moves one already placed. At least one document
    is for validation (the lowest hash), and at least one for training; the validation text is
    capped at MAX_VALIDATION_CHARS by giving back the highest-hash documents."""
    if len(documents) < 2:
        raise BluError("a corpus of documents needs at least two: one to train on, one to validate")
    scores = [validation_score(d, seed) for d in documents]
    chosen = sorted((s, i) for i, s in enumerate(scores) if s < fraction) or [min((s, i) for i, s in enumerate(scores))]
    if len(chosen) == len(documents):
        chosen = chosen[:-1]
    kept, size = set(), 0
    for _, index in chosen:  # lowest hash first
        if size and size + len(documents[index]) > MAX_VALIDATION_CHARS:
            break
        kept.add(index)
        size += len(documents[index])
    return ([d for i, d in enumerate(documents) if i not in kept], [d for i, d in enumerate(documents) if i in kept])


@dataclass
class TextParts:
    """A run's text cut into training and validation parts before tokenizing, so that every
    tokenizer scores the same text. A plain file is one document cut at a character (only its
    validation part reaches the document's end); a corpus is cut between documents."""

    train: list[str]
    validation: list[str]
    documents: bool  # each part is a whole document (which an end-of-text token follows)
    record: dict  # what config.json keeps: where the text came from and which of it is validation


def text_parts(data, fraction: float, seed: int, ext=None, text_field: str = "text", skip_bad: bool = False,
               expected: dict | None = None, val_data=None) -> tuple[TextParts, Path, list[str]]:
    """The parts of `data` (None: tiny Shakespeare), its path and the bad files left out. With
    `val_data`, all of `data` is for training and all of `val_data` for validation. With
    `expected` (the record of a run), the same text is read again and refused if it changed."""
    if val_data is not None:
        train, path, skipped = _whole(data, ext, text_field, skip_bad, (expected or {}).get("train"))
        validation, _, skipped_too = _whole(val_data, ext, text_field, skip_bad, (expected or {}).get("validation"))
        record = {"path": train.record["path"], "kind": "explicit validation", "train": train.record,
                  "validation": validation.record}
        return TextParts(train.train, validation.train, train.documents, record), path, skipped + skipped_too
    whole, path, skipped = _whole(data, ext, text_field, skip_bad, expected)
    if whole.documents:
        train, validation = split_documents(whole.train, fraction, seed)
    else:  # one document: its final range, cut at a character (the check against the context comes later)
        train_text, val_text = split(whole.train[0], 1, str(path), fraction)
        train, validation = [train_text], [val_text]
    joined = "".join(validation)
    where = {"documents": len(validation)} if whole.documents else {"from_char": len(train[0])}
    record = {**whole.record, "val_fraction": fraction,
              "validation": {**where, "chars": len(joined), "sha256": sha256_of(joined.encode("utf-8"))}}
    return TextParts(train, validation, whole.documents, record), path, skipped


def _whole(data, ext, text_field, skip_bad, expected: dict | None) -> tuple[TextParts, Path, list[str]]:
    """All of `data` as the training part, checked against the `expected` record if any."""
    path = Path(data) if data is not None else None
    if path is not None and is_document_corpus(path):
        corpus = read_documents(path, ext, text_field, skip_bad)
        if expected and expected.get("files") != corpus.files:
            raise BluError(f"{path} has changed since this run was trained on it (its files differ from the manifest)")
        record = {"path": str(path.resolve()), "kind": "documents", "ext": ext, "text_field": text_field,
                  "skip_bad_files": skip_bad, "files": corpus.files, "documents": len(corpus.documents)}
        return TextParts(corpus.documents, [], True, record), path, corpus.skipped
    text, path = load_text(data, expected.get("sha256") if expected else None)
    record = {"path": str(path.resolve()) if data else None, "sha256": sha256_of(text.encode("utf-8")), "chars": len(text)}
    return TextParts([text], [], False, record), path, []
