"""The text of a run as tokens: its corpus opened and split, its tokenizer chosen or built from
the training text, and its token shards read from the cache or written there (cache.py).
runs.py creates and resumes runs on it; `blu prepare` stops here."""

import math
from pathlib import Path
import sys

from ..config import TrainConfig
from ..errors import BluError
from ..tokenizers import (
    DEFAULT_KIND,
    DEFAULT_KIND_SHAKESPEARE,
    Tokenizer,
    build_tokenizer,
    check_tokenizer_settings,
    tokenizer_from_json,
)
from ..tokenizers.bytelevel import MAX_TRAINING_CHARS
from .cache import CorpusCache, Prepared, tokens_dir
from .sources import Source
from .split import Corpus, check_unchanged
from .text import VAL_FRACTION, split_point


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_corpus(data, val_data, fraction: float, seed: int, ext=None, text_field: str = "text",
                skip_bad: bool = False) -> Corpus:
    """The corpus of --data (None: tiny Shakespeare) and --val-data, its files listed."""
    def source(path):
        return Source(Path(path) if path is not None else None, ext, text_field, skip_bad)

    return Corpus(source(data), source(val_data) if val_data is not None else None, fraction, seed)


def choose_tokenizer(corpus: Corpus, cache: CorpusCache, plan, kind: str | None, vocab_size: int | None,
                     tokenizer_from=None) -> Tokenizer:
    """The tokenizer in `tokenizer_from` (a run folder or a tokenizer.json), or a new one of
    `kind` (default: bpe, or char for tiny Shakespeare) built from the corpus's training text only and kept in its cache."""
    if tokenizer_from is not None:
        if kind is not None or vocab_size is not None:
            raise BluError("--tokenizer-from reuses a tokenizer: give it without --tokenizer or --vocab-size")
        return read_tokenizer(tokenizer_from)
    kind = kind or (DEFAULT_KIND if corpus.train.path is not None else DEFAULT_KIND_SHAKESPEARE)
    check_tokenizer_settings(kind, vocab_size)  # before any reading
    # A BPE learns from at most MAX_TRAINING_CHARS of the text: every n-th piece, spread over the corpus.
    stride = max(1, math.ceil(plan.chars[0] / MAX_TRAINING_CHARS)) if kind == "bpe" else 1
    return cache.tokenizer(kind, vocab_size, lambda: build_tokenizer(
        kind, (p.text for i, p in enumerate(corpus.pieces(plan, validation=False)) if i % stride == 0), vocab_size))


def prepare(data=None, val_data=None, val_fraction: float | None = None, seed: int | None = None, ext=None,
            text_field: str | None = None, skip_bad_files: bool | None = None, tokenizer: str | None = None,
            vocab_size: int | None = None, tokenizer_from=None, workers: int | None = None, log=None) -> Prepared:
    """The token shards `blu train` with these settings would read, built now if they are not
    in the cache (`blu prepare`)."""
    corpus = open_corpus(data, val_data, VAL_FRACTION if val_fraction is None else val_fraction,
                         TrainConfig.seed if seed is None else seed, ext, text_field or "text", bool(skip_bad_files))
    cache, plan = split_corpus(corpus, log or say)
    return cache.tokens(plan, choose_tokenizer(corpus, cache, plan, tokenizer, vocab_size, tokenizer_from), workers)


def split_corpus(corpus: Corpus, log, record: dict | None = None) -> tuple[CorpusCache, object]:
    """The cache folder of a corpus and its split (scanned once, then read from there); with
    `record` (config.json's "data" of a run), refused if the files changed since."""
    manifests = corpus.manifests()
    if record is not None:
        check_unchanged(record, manifests, corpus.sources())
    cache = CorpusCache(corpus, manifests, log)
    return cache, cache.plan()


def tokens_for(corpus: Corpus, cache: CorpusCache, plan, tokenizer: Tokenizer, context: int) -> Prepared:
    """The corpus's tokens (from the cache, or tokenized into it), checked against the context."""
    name = str(corpus.train.root)
    if plan.from_char is not None:  # one file cut in two: the exact minimum, in characters
        split_point(plan.chars[0], context, name, corpus.fraction)
    prepared = cache.tokens(plan, tokenizer)
    if len(prepared.train) < context + 1:
        raise BluError(f"{name} is too short for a context of {context}: its training text is {len(prepared.train)} "
                       "tokens; give more text or a smaller --context")
    if len(prepared.val_tokens) < 2:
        raise BluError(f"{name}: the validation text is too short to score (fewer than 2 tokens)")
    return prepared


def tokens_record(prepared: Prepared) -> dict:
    return {"cache": str(prepared.folder.relative_to(tokens_dir())), "train": len(prepared.train),
            "validation": len(prepared.val_tokens)}


def read_tokenizer(source) -> Tokenizer:
    """The tokenizer of a run folder, or of a tokenizer.json file (blu's or a native `tokenizers` one)."""
    path = Path(source)
    path = path / "tokenizer.json" if path.is_dir() else path
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BluError(f"{path}: no such tokenizer file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BluError(f"{path}: cannot read ({error})") from None


def trained_corpus(meta: dict, seed: int, log) -> tuple[Corpus, CorpusCache, object]:
    """The corpus a run was trained on, its cache and its split, refused if it changed."""
    data = meta.get("data")
    if not (isinstance(data, dict) and isinstance(data.get("path"), (str, type(None)))):
        raise BluError("config.json does not say which text the run was trained on (its data section is missing or damaged)")
    fraction = data.get("val_fraction", VAL_FRACTION)  # runs from before it was a choice: 10%
    if not isinstance(fraction, float):
        raise BluError("config.json: data.val_fraction should be a number")
    explicit = data.get("kind") == "explicit validation"
    source = data["train"] if explicit else data
    corpus = open_corpus(source["path"], data["validation"]["path"] if explicit else None, fraction, seed,
                         source.get("ext"), source.get("text_field", "text"), source.get("skip_bad_files", False))
    return (corpus, *split_corpus(corpus, log, data))
