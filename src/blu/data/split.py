"""The text of a run: its sources (sources.py) split into training and validation text
before tokenizing, the record of which is which, and the check that it has not changed.

A plain text file is one document whose final range (text.split_point) is for validation; a
corpus of documents is split by a seeded hash of each document (`choose_validation`). The
split is found by one pass over the corpus (`Corpus.scan`) and kept as a `Plan`.
"""

from array import array
from dataclasses import dataclass
import hashlib
from typing import Iterator, NamedTuple

from ..config import MAX_VALIDATION_CHARS
from ..errors import BluError
from .sources import Source
from .text import split_point


class Piece(NamedTuple):
    """A piece of a document's text, in order."""

    text: str
    validation: bool  # part of the validation text
    ends: bool  # an end-of-text token follows it (it ends a document of a corpus, or the validation text)


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


@dataclass
class Plan:
    """What one pass over a corpus found: how to split it, and what it holds. Saved as JSON."""

    validation: list[int] | None  # the documents for validation (None: from_char, or all of --val-data)
    from_char: int | None  # one text file: where its validation range starts
    chars: list[int]  # characters of text, per source
    text_bytes: int  # UTF-8 bytes of text, every source
    documents: list[int]  # documents, per source
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
        scores, sizes, chars, documents, text_bytes, skipped, skipped_files = array("d"), array("q"), [], [], 0, [], []
        for number, source in enumerate(self.sources()):
            chars.append(0)
            documents.append(0)
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
                documents[number] += len(file_sizes)
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
        return Plan(validation, from_char, chars, text_bytes, documents, skipped, skipped_files)

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

    def record(self, manifests, plan: Plan, validation: dict) -> dict:
        """What config.json keeps under "data": where the text came from and which of it is
        validation (`validation`: its "chars" and "sha256", as the tokenizing measured them)."""
        def described(source: Source, manifest: list[dict], documents: int, chars: int) -> dict:
            if source.documents:
                return {"path": str(source.root.resolve()), "kind": "documents", "ext": source.ext,
                        "text_field": source.text_field, "skip_bad_files": source.skip_bad,
                        "files": [f for f in manifest if f["path"] not in plan.skipped_files], "documents": documents,
                        **({"skipped_files": plan.skipped_files} if plan.skipped_files else {})}
            return {"path": str(source.root.resolve()) if source.path is not None else None,
                    "sha256": manifest[0]["sha256"], "chars": chars}

        train = described(self.train, manifests[0], plan.documents[0], plan.chars[0])
        if self.held_out is not None:
            return {"path": train["path"], "kind": "explicit validation", "train": train,
                    "validation": described(self.held_out, manifests[1], plan.documents[1], plan.chars[1])}
        where = {"documents": len(plan.validation)} if plan.validation is not None else {"from_char": plan.from_char}
        return {**train, "val_fraction": self.fraction,
                "validation": {**where, "chars": validation["chars"], "sha256": validation["sha256"]}}


def check_unchanged(record: dict, manifests: list[list[dict]], sources: list[Source]) -> None:
    """Refuse a corpus whose files differ from what a run recorded (config.json's "data")."""
    parts = [record["train"], record["validation"]] if record.get("kind") == "explicit validation" else [record]
    for part, manifest, source in zip(parts, manifests, sources):
        if part.get("kind") == "documents":
            if [f for f in manifest if f["path"] not in part.get("skipped_files", [])] != part["files"]:
                raise BluError(f"{source.root} has changed since this run was trained on it (its files differ from the manifest)")
        elif part.get("sha256") and manifest[0]["sha256"] != part["sha256"]:
            raise BluError(f"{source.root} has changed since this run was trained on it (SHA-256 differs)")
