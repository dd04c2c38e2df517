"""The text of a run as tokens: its corpus opened and split, its tokenizer chosen or built from
the training text, and its token shards read from the cache or written there (cache.py).
runs.py creates and resumes runs on it; `blu prepare` stops here."""

import math
from pathlib import Path
import sys

from ..config import TextSettings
from ..errors import BluError
from ..tokenizers import Tokenizer, build_tokenizer, check_tokenizer_settings, tokenizer_from_json
from ..tokenizers.bytelevel import MAX_TRAINING_CHARS
from .cache import CorpusCache, Prepared, tokens_dir
from .sources import Source
from .split import Corpus, check_unchanged
from .text import split_point


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_corpus(text: TextSettings, seed: int) -> Corpus:
    """The corpus of --data (None: tiny Shakespeare) and --val-data, its files listed, once the
    settings are checked."""
    text.validate()
    if text.tokenizer_from is None:
        check_tokenizer_settings(text.tokenizer_kind(), text.vocab_size)

    def source(path):
        return Source(Path(path) if path is not None else None, text.ext, text.text_field, text.skip_bad_files)

    return Corpus(source(text.data), source(text.val_data) if text.val_data is not None else None, text.val_fraction, seed)


def choose_tokenizer(corpus: Corpus, cache: CorpusCache, plan, text: TextSettings) -> Tokenizer:
    """The tokenizer in --tokenizer-from (a run folder or a tokenizer.json), or a new one of the
    settings' kind built from the corpus's training text only and kept in its cache."""
    if text.tokenizer_from is not None:
        return read_tokenizer(text.tokenizer_from)
    kind, vocab_size = text.tokenizer_kind(), text.vocab_size
    # A BPE learns from at most MAX_TRAINING_CHARS of the text: every n-th piece, spread over the corpus.
    stride = max(1, math.ceil(plan.chars[0] / MAX_TRAINING_CHARS)) if kind == "bpe" else 1
    return cache.tokenizer(kind, vocab_size, lambda: build_tokenizer(
        kind, (p.text for i, p in enumerate(corpus.pieces(plan, validation=False)) if i % stride == 0), vocab_size),
        plan.text_bytes)


def prepare(text: TextSettings, seed: int, workers: int | None = None, log=say) -> Prepared:
    """The token shards `blu train` with these settings and `seed` (the run's: it chooses the
    split) would read, built now if they are not in the cache (`blu prepare`)."""
    corpus = open_corpus(text, seed)
    cache, plan = split_corpus(corpus, log)
    return cache.tokens(plan, choose_tokenizer(corpus, cache, plan, text), workers)


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
        tokenizer = tokenizer_from_json(path.read_text(encoding="utf-8"))
        # A run of blu's own kinds fine-tuned on conversations keeps its chat template beside (chat_kinds.py).
        if tokenizer.kind != "hf" and (template := path.with_name("chat_template.jinja")).is_file():
            tokenizer.chat_template = template.read_text(encoding="utf-8")
        return tokenizer
    except FileNotFoundError:
        raise BluError(f"{path}: no such tokenizer file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BluError(f"{path}: cannot read ({error})") from None


def trained_corpus(meta: dict, seed: int, log) -> tuple[Corpus, CorpusCache, object]:
    """The corpus a run was trained on, its cache and its split, refused if it changed."""
    data = meta.get("data")
    if not (isinstance(data, dict) and isinstance(data.get("path"), (str, type(None)))):
        raise BluError("config.json does not say which text the run was trained on (its data section is missing or damaged)")
    fraction = data.get("val_fraction", 0.1)  # runs from before it was a choice held out 10%
    if not isinstance(fraction, float):
        raise BluError("config.json: data.val_fraction should be a number")
    explicit = data.get("kind") == "explicit validation"
    source = data["train"] if explicit else data
    text = TextSettings(data=source["path"], val_data=data["validation"]["path"] if explicit else None, val_fraction=fraction,
                        ext=source.get("ext"), text_field=source.get("text_field", "text"),
                        skip_bad_files=source.get("skip_bad_files", False))
    corpus = open_corpus(text, seed)
    return (corpus, *split_corpus(corpus, log, data))
