"""The token cache: a corpus tokenized once (encode.py) into files in the cache folder, found
again by a key of its files and settings, and read back through memory maps (batches.py).
What is cached, under $BLU_CACHE/tokens/:

    <corpus key>/                 one corpus: its files (paths, sizes, SHA-256) and split settings
        corpus.json               the split found by scanning it (corpus.Plan) and what it is for
        tokenizer-<kind>-<n>.json tokenizers built from its training text
        <tokenizer key>/          its tokens by one tokenizer (the key: SHA-256 of tokenizer.json)
            train-000000.bin ...  training tokens, uint16 (uint32 above 65,536 ids), ~4M characters each
            val.bin, val_bytes.bin  validation tokens and the UTF-8 bytes each stands for
            index.json            written last: a folder without it is never read
        .lock                     held by the process preparing this corpus

A folder of tokens is built as <tokenizer key>.tmp-<pid> and renamed into place when whole, so
Ctrl-C, kill -9 or a full disk never leave a partial folder that looks whole; leftovers are
removed by the next preparation. Two processes preparing one corpus take turns on the lock,
and the second finds the work done.
"""

from contextlib import contextmanager
from dataclasses import dataclass
import fcntl
import hashlib
import json
import multiprocessing
import os
from pathlib import Path
import signal
import time

import numpy as np

from ..config import DEFAULT_BPE_VOCAB_SIZE
from ..errors import BluError
from ..files import atomic_write, cache_dir, read_json, write_json
from ..tokenizers import Tokenizer, tokenizer_from_json
from ..tokenizers.bytelevel import MAX_TRAINING_CHARS
from .batches import TokenShards
from .encode import FORMAT, QUIET_BELOW, UNIT_CHARS, build_shards, encode_unit, units_of
from .split import Corpus, Plan

PLAN_FORMAT = 2  # of corpus.json: a plan of another format is scanned again
PARALLEL_BYTES = 16 << 20  # smaller corpora are tokenized in this process: starting workers costs more


def tokens_dir() -> Path:
    return cache_dir() / "tokens"


def _key(material) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Prepared:
    """A corpus tokenized: training tokens on disk, the validation text in memory."""

    train: TokenShards
    val_tokens: np.ndarray
    val_bytes: np.ndarray  # UTF-8 bytes of text each validation token stands for
    index: dict  # what index.json holds: counts, the validation text's size and SHA-256, timings
    folder: Path


class CorpusCache:
    """The cache folder of one corpus (`manifests`: its files as corpus.Corpus.manifests gives them)."""

    def __init__(self, corpus: Corpus, manifests, log):
        self.corpus, self.manifests, self.log = corpus, manifests, log
        self.material = corpus.key_material(manifests)
        self.folder = tokens_dir() / _key(self.material)

    @contextmanager
    def locked(self):
        """Held while preparing, so that two processes never build the same files at once."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / ".lock", "a")
        except OSError as error:
            raise BluError(f"cannot write to the cache folder {self.folder.parent} ({error.strerror}); "
                           "set BLU_CACHE to a folder you can write") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"blu: waiting for another blu that is preparing this corpus ({self.folder})")
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # the lock goes with the file when it is closed, or when the process dies

    def plan(self) -> Plan:
        """The split of the corpus: scanned once, then read from corpus.json."""
        path = self.folder / "corpus.json"
        with self.locked():
            saved = read_json(path) if path.exists() else None
            if isinstance(saved, dict) and saved.get("format") == PLAN_FORMAT and saved.get("for") == self.material:
                return Plan(**saved["plan"])
            size = sum(f["bytes"] for files in self.manifests for f in files)
            if size >= QUIET_BELOW:
                self.log(f"blu: reading {size / 1e6:,.1f} MB in {sum(map(len, self.manifests)):,} files to split training "
                         "from validation text (once: the cache keeps the split)")
            start = time.perf_counter()
            plan = self.corpus.scan()
            seconds = time.perf_counter() - start
            write_json(path, {"format": PLAN_FORMAT, "for": self.material, "plan": plan.__dict__, "scan_s": round(seconds, 3)})
            if size >= QUIET_BELOW:
                self.log(f"blu: read {sum(plan.documents):,} documents, {plan.text_bytes / 1e6:,.1f} MB of text, "
                         f"in {seconds:.1f} s")
            return plan

    def tokenizer(self, kind: str, vocab_size: int | None, build, text_bytes: int = 0) -> Tokenizer:
        """The tokenizer `build()` makes from this corpus (of `text_bytes` of text), kept for the
        next run on it (building is deterministic: the same corpus and settings give the same file)."""
        path = self.folder / f"tokenizer-{kind}-{vocab_size or 0}-{MAX_TRAINING_CHARS}.json"
        with self.locked():
            if path.exists():
                return tokenizer_from_json(path.read_text(encoding="utf-8"))
            if kind == "bpe" and text_bytes >= QUIET_BELOW:
                self.log(f"blu: building a bpe tokenizer of {vocab_size or DEFAULT_BPE_VOCAB_SIZE:,} tokens from the "
                         "training text (once: the cache keeps it)")
            start = time.perf_counter()
            # A BPE is trained in a child process: what that allocates (most of a GB on a large corpus)
            # leaves with it, instead of staying in this process and in the workers it forks to tokenize.
            tokenizer = tokenizer_from_json(_in_child(lambda: build().to_json())) if kind == "bpe" else build()
            atomic_write(path, tokenizer.to_json().encode())
            if kind == "bpe" and time.perf_counter() - start >= 1:
                self.log(f"blu: built a bpe tokenizer of {tokenizer.vocab_size:,} tokens in {time.perf_counter() - start:.1f} s")
            return tokenizer

    def tokens(self, plan: Plan, tokenizer: Tokenizer, workers: int | None = None,
               unit_chars: int = UNIT_CHARS, parallel_bytes: int = PARALLEL_BYTES) -> Prepared:
        """The corpus's tokens by `tokenizer`: read from the cache, or written there first."""
        target = self.folder / _key(tokenizer.to_json())
        if not (target / "index.json").exists():
            with self.locked():
                if not (target / "index.json").exists():  # another process may have built it while we waited
                    if workers is None:
                        workers = _cores() if plan.text_bytes >= parallel_bytes else 1
                    build_shards(self.corpus, plan, tokenizer, target, workers, unit_chars, self.log)
        return open_prepared(target)

    def validation(self, plan: Plan, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
        """The validation text's tokens, the bytes each stands for and its unknown characters:
        from the cache if the corpus was tokenized by `tokenizer`, else the validation text
        alone, encoded now."""
        target = self.folder / _key(tokenizer.to_json())
        if (target / "index.json").exists():
            prepared = open_prepared(target)
            return prepared.val_tokens, prepared.val_bytes, prepared.index["validation"]["unknown"]
        units = units_of(self.corpus.pieces(plan, train=False), UNIT_CHARS)
        encoded = [encode_unit(tokenizer, unit, None) for unit in units]
        if not encoded:
            raise BluError(f"{self.corpus.train.root}: the validation text is empty")
        return (np.concatenate([e[1] for e in encoded]), np.concatenate([e[2] for e in encoded]),
                sum(e[3] for e in encoded))


def _cores() -> int:
    """The cores this process may run on (all of the machine's where that cannot be known)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _in_child(work):
    """What `work()` returns (a str), computed in a forked child process; its BluError is raised here."""
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)

    def run():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends this process
        try:
            send.send(("ok", work()))
        except BluError as error:
            send.send(("error", str(error)))

    child = multiprocessing.get_context("fork").Process(target=run)
    child.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        child.join()
        raise BluError(f"building the tokenizer failed (its process ended with code {child.exitcode})") from None
    except BaseException:
        child.terminate()
        raise
    finally:
        child.join()
    if status == "error":
        raise BluError(value)
    return value


def open_prepared(folder: Path) -> Prepared:
    index = read_json(folder / "index.json")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise BluError(f"{folder} holds token shards this blu cannot read: delete the folder to rebuild them")
    dtype = np.dtype(index["dtype"])
    val_tokens = np.fromfile(folder / "val.bin", dtype=dtype)
    val_bytes = np.fromfile(folder / "val_bytes.bin", dtype=np.uint32).astype(np.int64)
    return Prepared(TokenShards(folder, index), val_tokens, val_bytes, index, folder)


def list_cache() -> list[dict]:
    """What the cache holds: one entry per tokenized corpus (for `blu prepare --list`)."""
    entries = []
    for index_path in sorted(tokens_dir().glob("*/*/index.json")):
        index = read_json(index_path)
        size = sum(f.stat().st_size for f in index_path.parent.iterdir())
        entries.append({"folder": str(index_path.parent), "corpus": ", ".join(index.get("corpus", [])),
                        "tokenizer": f"{index.get('tokenizer')} {index.get('vocab_size')}",
                        "tokens": index.get("train_tokens", 0) + index.get("validation", {}).get("tokens", 0),
                        "megabytes": round(size / 1e6, 1), "created": index.get("created")})
    return entries
