"""Writing token shards: a corpus's pieces grouped in units of about UNIT_CHARS characters,
encoded by forked worker processes that write each training unit to its own shard file in a
temporary folder, renamed into place when whole (see cache.py for the cache around it)."""

from collections import deque
from dataclasses import dataclass
import errno
import hashlib
import multiprocessing
import os
from pathlib import Path
import shutil
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from ..errors import BluError
from ..files import write_json
from ..tokenizers import Tokenizer
from .split import Corpus, Plan

FORMAT = 1  # of index.json and the files beside it
UNIT_CHARS = 4 << 20  # text a worker encodes at a time, into a shard file of its own
# From this size of text on (about a second's work on a 2-core CPU), reading, building a BPE and
# tokenizing are each said as they start and when they end, so that set-up is never long and silent.
QUIET_BELOW = 4 << 20
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def build_shards(corpus: Corpus, plan: Plan, tokenizer: Tokenizer, target: Path, workers: int, unit_chars: int, log):
    for leftover in target.parent.glob(f"{target.name}.tmp-*"):  # from a preparation that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if plan.text_bytes >= QUIET_BELOW:
        log(f"blu: tokenizing {plan.text_bytes / 1e6:,.1f} MB of text ({_processes(workers)}; once: the cache keeps the tokens)")
    start = time.perf_counter()
    try:
        temporary.mkdir()
        shards, validation, val_bytes, val_digest, val_chars, unknown = [], [], [], hashlib.sha256(), 0, [0, 0]
        bar = tqdm(total=plan.text_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not sys.stderr.isatty(),
                   file=sys.stderr)
        units = units_of(corpus.pieces(plan), unit_chars)
        for unit, (written, ids, lengths, n_unknown, n_bytes) in _encoded(units, tokenizer, workers, temporary):
            if unit.validation:
                validation.append(ids)
                val_bytes.append(lengths)
                for text, _ in unit.pieces:
                    val_digest.update(text.encode("utf-8"))
                    val_chars += len(text)
            else:
                shards.append({"file": _shard_name(unit.number), "tokens": written})
            unknown[unit.validation] += n_unknown
            bar.update(n_bytes)
        bar.close()
        val_tokens = np.concatenate(validation) if validation else np.zeros(0, tokenizer.dtype)
        _write_array(temporary / "val.bin", val_tokens.astype(tokenizer.dtype))
        _write_array(temporary / "val_bytes.bin", np.concatenate(val_bytes).astype(np.uint32) if val_bytes
                     else np.zeros(0, np.uint32))
        seconds = time.perf_counter() - start
        train_tokens = sum(shard["tokens"] for shard in shards)
        index = {"format": FORMAT, "dtype": np.dtype(tokenizer.dtype).name, "tokenizer": tokenizer.kind,
                 "vocab_size": tokenizer.vocab_size, "corpus": [s.root.name for s in corpus.sources()],
                 "text_bytes": plan.text_bytes, "train_tokens": train_tokens, "train_unknown": unknown[0],
                 "shards": shards, "workers": workers, "seconds": round(seconds, 3),
                 "validation": {"tokens": len(val_tokens), "chars": val_chars, "sha256": val_digest.hexdigest(),
                                "unknown": unknown[1]},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(temporary / "index.json", index)
        os.rename(temporary, target)
    except OSError as error:
        if error.errno in FULL_DISK:
            raise BluError(f"the disk holding {target.parent.parent} is full ({error.strerror}): tokenizing this corpus needs "
                           f"about {2 * plan.text_bytes / 1e6:,.0f} MB there; free some, or set BLU_CACHE to "
                           "another disk") from None
        raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if plan.text_bytes >= QUIET_BELOW:
        log(f"blu: tokenized {plan.text_bytes / 1e6:,.1f} MB in {seconds:.1f} s ({plan.text_bytes / 1e6 / max(seconds, 1e-9):.1f}"
            f" MB/s, {_processes(workers)}): {train_tokens:,} training tokens in {len(shards)} shard files, "
            f"{len(val_tokens):,} validation tokens, cached in {target}")


def _processes(workers: int) -> str:
    return f"{workers} process{'es' if workers > 1 else ''}"


def _shard_name(number: int) -> str:
    return f"train-{number:06}.bin"


def _write_array(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as file:
        file.write(values.tobytes())
        file.flush()
        os.fsync(file.fileno())


@dataclass
class _Unit:
    """Consecutive pieces of text, all training or all validation, encoded together; training
    units are numbered, each written to its own shard file."""

    pieces: list  # (text, an end-of-text follows)
    validation: bool
    number: int = 0


def units_of(pieces, unit_chars: int):
    unit, size, number = None, 0, 0
    for piece in pieces:
        if unit is not None and (unit.validation != piece.validation or size >= unit_chars):
            yield unit
            unit = None
        if unit is None:
            unit, size = _Unit([], piece.validation, number), 0
            number += not piece.validation
        unit.pieces.append((piece.text, piece.ends))
        size += len(piece.text)
    if unit is not None:
        yield unit


def encode_unit(tokenizer: Tokenizer, unit: _Unit, folder: Path | None):
    """A unit's ids (with an end-of-text after each piece that ends a document) written to its
    shard file in `folder` (training) or returned with the bytes each stands for (validation):
    (tokens written, ids, byte lengths, unknown characters, UTF-8 bytes of text)."""
    ids, lengths, unknown, n_bytes = [], [], 0, 0
    end = [] if tokenizer.end_id is None else [tokenizer.end_id]
    for text, ends in unit.pieces:
        piece_ids, piece_unknown = tokenizer.encode_array(text)
        ids.append(piece_ids)
        unknown += piece_unknown
        n_bytes += len(text.encode("utf-8"))
        if unit.validation:
            lengths.append(tokenizer.byte_lengths(text, piece_ids))
        if ends and end:
            ids.append(np.array(end, dtype=piece_ids.dtype))
            lengths.append(np.zeros(1, dtype=np.int64))
    ids = np.concatenate(ids).astype(tokenizer.dtype)
    if unit.validation or folder is None:
        return 0, ids, (np.concatenate(lengths) if unit.validation else None), unknown, n_bytes
    _write_array(folder / _shard_name(unit.number), ids)
    return len(ids), None, None, unknown, n_bytes


_worker_job: tuple | None = None  # (tokenizer, folder) of a worker process, inherited from its parent


def _start_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the pool


def _encode_in_worker(unit: _Unit):
    tokenizer, folder = _worker_job
    return encode_unit(tokenizer, unit, folder)


def _encoded(units, tokenizer: Tokenizer, workers: int, folder: Path):
    """(unit, what encode_unit returned) for each unit, in order; with `workers` > 1, encoded
    and written by that many worker processes while this one reads on, with at most two units
    per worker in flight, so that memory stays bounded whatever the corpus's size."""
    if workers <= 1:
        for unit in units:
            yield unit, encode_unit(tokenizer, unit, folder)
        return
    global _worker_job
    _worker_job = (tokenizer, folder)
    # A forked child must not use the thread pool `tokenizers` may have started here (it would
    # wait on threads that do not exist there); setting this before the fork tells it so, quietly.
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_start_worker)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    with pool:
        pending = deque()
        for unit in units:
            pending.append((unit, pool.apply_async(_encode_in_worker, (unit,))))
            if len(pending) > 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
