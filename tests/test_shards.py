"""Token shards in the cache: the same ids as encoding each document whole, in parallel or
not, across shard files; reused when nothing changed and rebuilt when a byte or the tokenizer
does; never taken whole after Ctrl-C, kill -9 or a full disk; safe with two preparers at once;
read with resident memory that does not grow."""

import fcntl
import json
import os
from pathlib import Path
import signal
import string
import subprocess
import sys
import time

from conftest import read_documents, split_documents
from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from blu.data.batches import TokenShards
from blu.data.cache import CorpusCache, list_cache
from blu.data.sources import Source, pieces_of
from blu.data.split import Corpus
from blu.errors import BluError
from blu.tokenizers import build_tokenizer


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return build_tokenizer("bpe", shakespeare.read_text(encoding="utf-8")[:300_000], 600)


def shuffled_plays(shakespeare, n: int, seed: int) -> list[str]:
    """n different documents of tiny Shakespeare's paragraphs in a seeded order."""
    paragraphs = shakespeare.read_text(encoding="utf-8").split("\n\n")
    order = np.random.default_rng(seed).permutation(len(paragraphs))
    return ["\n\n".join(paragraphs[j] for j in order[i::n]) for i in range(n)]


@pytest.fixture
def books(tmp_path, shakespeare) -> Path:
    """A folder of 8 documents, about 2.2 MB."""
    root = tmp_path / "books"
    root.mkdir()
    for i, text in enumerate(shuffled_plays(shakespeare, 4, 0) + shuffled_plays(shakespeare, 4, 1)):
        (root / f"book{i}.txt").write_text(text, encoding="utf-8")
    return root


def prepared(root, tokenizer, **options):
    corpus = Corpus(Source(root), None, 0.1, 1337)
    cache = CorpusCache(corpus, corpus.manifests(), log=lambda message: None)
    return cache, cache.tokens(cache.plan(), tokenizer, **options)


def test_pieces_cut_where_bpe_ids_do_not_change(bpe):
    """Documents are cut into pieces only where BPE ids cannot change (or where they must), so the
    pieces encode as the whole."""
    text = "Hello,  world!\n\n  indented\tTabs and 'quotes' end." * 40 + " tail"
    pieces = list(pieces_of([text[i : i + 37] for i in range(0, len(text), 37)], size=50))
    assert "".join(p for p, _ in pieces) == text and [last for _, last in pieces] == [False] * (len(pieces) - 1) + [True]
    assert len(pieces) > 20 and max(len(p) for p, _ in pieces) < 100
    assert [len(p) for p, _ in pieces_of(["x" * 120 + " y" + "z" * 60], size=50)] == [50, 50, 20, 50, 12]  # no safe place
    assert np.concatenate([bpe.encode_array(p)[0] for p, _ in pieces]).tolist() == bpe.encode(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["the", "King", "42", "'s", " ", "  ", "\n", "\n\n", "\t", ",", "é", "日本", "🙂", "\r\n"]),
                max_size=300), st.integers(5, 40))
def test_pieces_of_any_text_encode_as_the_whole(bpe, words, size):
    """On any text, pieces stay within their size, cut at a safe place unless none is in reach, and
    then encode as the whole text."""
    text = "".join(words)
    pieces = [p for p, _ in pieces_of([text], size=size)]
    assert "".join(pieces) == text and all(len(p) <= size for p in pieces)
    ends = np.cumsum([len(p) for p in pieces])[:-1]
    safe = [text[e] in " \n" and (text[e - 1].isalnum() or text[e - 1] in string.punctuation) for e in ends]
    assert all(is_safe or len(p) == size for is_safe, p in zip(safe, pieces))  # cut as it comes only when it must
    if all(safe):
        assert sum((bpe.encode(p) for p in pieces), []) == bpe.encode(text)


def test_shards_hold_the_ids_of_each_document_encoded_whole_in_parallel_or_not(books, bpe, monkeypatch, tmp_path):
    """The shard files hold each training document encoded whole with its end-of-text, in one process
    or two, and windows across files read as one sequence."""
    documents = read_documents(books)
    train, validation = split_documents(documents, 0.1, 1337)
    expected = np.concatenate([np.append(bpe.encode_array(d)[0], bpe.end_id) for d in train])
    _, serial = prepared(books, bpe, workers=1, unit_chars=100_000)
    assert len(serial.train.paths) > 5 and serial.train.read().tolist() == expected.tolist()
    assert serial.val_tokens.tolist() == np.concatenate([np.append(bpe.encode_array(d)[0], bpe.end_id)
                                                         for d in validation]).tolist()
    # Windows that cross shard files read as the one sequence.
    edges = serial.train.starts[1:3]
    starts = np.array([0, edges[0] - 10, edges[1] - 1, len(expected) - 65])
    assert (serial.train.windows(starts, 65) == expected[starts[:, None] + np.arange(65)]).all()
    monkeypatch.setenv("BLU_CACHE", str(tmp_path / "another cache"))
    _, parallel = prepared(books, bpe, workers=2, parallel_bytes=0, unit_chars=300_000)
    assert parallel.index["workers"] == 2 and len(parallel.train.paths) > 3
    assert parallel.train.read().tolist() == expected.tolist()


def test_reused_when_nothing_changed_and_rebuilt_when_a_byte_or_the_tokenizer_does(books, bpe):
    """The token cache is reused as it is, and rebuilt when one byte of the corpus or the tokenizer
    changes."""
    _, first = prepared(books, bpe)
    created = (first.folder / "index.json").stat().st_mtime_ns
    _, again = prepared(books, bpe)
    assert again.folder == first.folder and (again.folder / "index.json").stat().st_mtime_ns == created
    _, by_bytes = prepared(books, build_tokenizer("byte", ""))
    assert by_bytes.folder.parent == first.folder.parent and by_bytes.folder != first.folder
    book = books / "book3.txt"
    book.write_bytes(book.read_bytes().replace(b"e", b"E", 1))
    _, changed = prepared(books, bpe)
    assert changed.folder.parent != first.folder.parent
    assert {e["folder"] for e in list_cache()} >= {str(first.folder), str(by_bytes.folder), str(changed.folder)}


def test_tokens_are_read_with_flat_resident_memory(tmp_path):
    """Windows from all over a 96 MB shard: the process keeps none of its pages mapped."""
    folder = tmp_path / "tokens"
    folder.mkdir()
    np.arange(48 << 20, dtype=np.uint32).astype(np.uint16).tofile(folder / "train-00000.bin")
    shards = TokenShards(folder, {"dtype": "uint16", "shards": [{"file": "train-00000.bin", "tokens": 48 << 20}]})

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    rng = np.random.default_rng(0)
    shards.windows(rng.integers(0, len(shards) - 300, 64), 257)
    before = resident_mb()
    for _ in range(600):  # 38,400 windows: a page in every 1,300 or so of the file
        window = shards.windows(rng.integers(0, len(shards) - 300, 64), 257)
        assert ((window[:, 1:] - window[:, :-1]) % 65536 == 1).all()  # the file counts up (mod 65,536)
    assert resident_mb() - before < 10


def prepare_command(root, *flags):
    return [sys.executable, "-m", "blu", "prepare", "--data", str(root), *flags]


@pytest.fixture
def big_corpus(tmp_path, shakespeare) -> Path:
    """About 18 MB in 8 files (as much as 1 s of byte tokenizing)."""
    root = tmp_path / "big"
    root.mkdir()
    for i in range(8):
        (root / f"part{i:02}.txt").write_text("\n\n".join(shuffled_plays(shakespeare, 1, i) * 2), encoding="utf-8")
    return root


def _env(cache: Path) -> dict:
    return {**os.environ, "BLU_CACHE": str(cache)}


def _entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "tokens").glob("*/*") if p.is_dir()]


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_an_interrupted_preparation_is_never_taken_whole(big_corpus, tmp_path, bpe, how):
    """A preparation stopped by Ctrl-C or kill -9 mid-way leaves nothing that a later run would take
    for whole tokens."""
    cache = tmp_path / "cache"
    (tmp_path / "bpe.json").write_text(bpe.to_json(), encoding="utf-8")
    command = prepare_command(big_corpus, "--tokenizer-from", str(tmp_path / "bpe.json"), "--workers", "2")
    # A shell's background job (CI started with &, say) ignores SIGINT, and its children inherit that: a
    # terminal's process gets the default, which Python turns into KeyboardInterrupt.
    process = subprocess.Popen(command, env=_env(cache), stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(  # tokenizing, with a shard file on its way
            f.stat().st_size for p in _entries(cache) if ".tmp-" in p.name for f in p.glob("train-*")):
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read()
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # as a terminal sends it: to every process of the group
        assert process.wait(30) == 130
        assert process.stderr.read().strip().splitlines()[-1] == "blu: interrupted"
        assert _entries(cache) == []  # the partial folder is gone
    else:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        assert [".tmp-" in p.name for p in _entries(cache)] == [True]  # left behind, never read
    done = subprocess.run(command, env=_env(cache), capture_output=True, text=True)
    assert done.returncode == 0 and "tokenized" in done.stderr, done.stderr
    [entry] = _entries(cache)  # the leftover was removed
    index = json.loads((entry / "index.json").read_text())
    assert index["train_tokens"] == len(TokenShards(entry, index)) > 1_000_000


def test_two_preparers_at_once_take_turns(big_corpus, tmp_path, monkeypatch):
    """Both start while the corpus's lock is held (here, by the test), so they surely meet."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BLU_CACHE", str(cache))
    corpus = Corpus(Source(big_corpus), None, 0.1, 1337)
    folder = CorpusCache(corpus, corpus.manifests(), log=lambda message: None).folder
    folder.mkdir(parents=True)
    logs = [tmp_path / f"stderr{i}" for i in range(2)]
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        processes = [subprocess.Popen(prepare_command(big_corpus, "--tokenizer", "byte", "--workers", "1"), env=_env(cache),
                                      stderr=open(log, "w")) for log in logs]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all("waiting for another blu" in log.read_text() for log in logs):
            time.sleep(0.05)
    for process in processes:
        process.wait(300)
    errors = [log.read_text() for log in logs]
    assert [p.returncode for p in processes] == [0, 0], errors
    assert all("waiting for another blu" in e for e in errors)
    assert sum("tokenized" in e for e in errors) == 1  # one tokenized; the other waited and found the work done
    [entry] = _entries(cache)
    shards = TokenShards(entry, json.loads((entry / "index.json").read_text()))
    train, _ = split_documents(read_documents(big_corpus), 0.1, 1337)
    assert shards.read().tolist() == np.concatenate(
        [np.append(np.frombuffer(d.encode("utf-8"), np.uint8), 256) for d in train]).tolist()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root (CI runs as root)")
def test_a_full_disk_is_one_line_and_leaves_nothing(big_corpus, tmp_path):
    """A disk that fills while tokenizing is one line saying how much room is needed, and leaves no
    partial folder."""
    cache = tmp_path / "small-disk"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(cache)], check=True)
    try:
        result = subprocess.run(prepare_command(big_corpus, "--tokenizer", "byte"), env=_env(cache),
                                capture_output=True, text=True)
        assert result.returncode == 2
        *_, line = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr and result.stderr.count("error") == 1
        assert line.startswith("blu: error: the disk holding") and "is full" in line and "BLU_CACHE" in line
        assert _entries(cache) == []
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_a_missing_cache_folder_is_one_line(books, bpe, monkeypatch, tmp_path):
    """A cache folder that cannot be created (a file in its place) is one line naming BLU_CACHE's
    folder."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("BLU_CACHE", str(tmp_path / "file"))  # a file where the cache folder should be
    with pytest.raises(BluError, match="cannot write to the cache folder"):
        prepared(books, bpe)
