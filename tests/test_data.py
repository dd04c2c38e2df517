import time

import numpy as np
import pytest

from blu.data import batches
from blu.data import text as data
from blu.errors import BluError


def test_batches_line_up_with_targets():
    """Targets are the inputs shifted by one token, and the same seed draws the same batch: a
    misaligned target trains nonsense."""
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = batches.BatchSampler(tokens, batch_size=8, context=16, seed=0)
    x, y = sampler.next()
    assert x.shape == y.shape == (8, 16)
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    again = batches.BatchSampler(tokens, batch_size=8, context=16, seed=0).next()[0]
    assert (again == x).all()


def test_sampler_reaches_the_last_token():
    """Windows may end at the very last token: an off-by-one would never train on it."""
    tokens = np.arange(20, dtype=np.uint8)
    sampler = batches.BatchSampler(tokens, batch_size=256, context=4, seed=1)
    assert int(sampler.next()[1].max()) == 19


def test_split_is_90_10_by_position():
    """The final tenth of a text is for validation, the rest for training: a moved cut changes every score."""
    assert data.split_point(1000, 16, "the corpus", 0.1) == 900
    assert data.split_point(100_000_000, 16, "the corpus", 0.5) == 100_000_000 - 4_000_000  # validation capped


def test_too_short_is_refused_with_the_least_length_that_fits():
    """A text too short for the context is refused, naming the shortest that fits (found by a
    search checked here against counting one length at a time)."""
    for n, context, fraction in [(100, 128, 0.1), (10, 4, 0.1), (50, 40, 0.3), (3, 1, 0.5)]:
        need = next(m for m in range(context + 1, 10_000) if 2 <= int(m * fraction) and m - int(m * fraction) > context)
        with pytest.raises(BluError, match=f"is too short: {n} characters; a context of {context} needs at least {need} "):
            data.split_point(n, context, "the corpus", fraction)


def test_a_tiny_val_fraction_is_refused_at_once():
    """--val-fraction 1e-9 once searched a billion lengths one at a time, minutes without a word."""
    start = time.perf_counter()
    with pytest.raises(BluError, match="needs at least 2000000000 "):
        data.split_point(60_000, 64, "the corpus", 1e-9)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"abc\x00def", "looks binary"),
    (b"good text \xff\xfe more", "invalid byte 0xff at offset 10"),
])
def test_bad_files(tmp_path, content, message):
    """An empty, binary or non-UTF-8 file is refused in one line naming what is wrong (with the offset
    of the bad byte)."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(BluError, match=message):
        data.read_corpus(path)


def test_missing_file_and_folder(tmp_path):
    """A missing path or a folder given as a text file is one clear error, not a traceback."""
    with pytest.raises(BluError, match="no such file"):
        data.read_corpus(tmp_path / "nope.txt")
    with pytest.raises(BluError, match="is a folder"):
        data.read_corpus(tmp_path)


def test_default_corpus_comes_from_the_cache(blu_cache):
    """Without --data, tiny Shakespeare is read from the cache folder (no download when it is there)."""
    path = data.default_corpus_path()
    assert path == blu_cache / "tinyshakespeare.txt"
    assert len(data.read_corpus(path)) == 1115394


def test_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    """Offline with an empty cache, the error says where to save tiny Shakespeare by hand."""
    monkeypatch.setenv("BLU_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(BluError, match=f"save .* as {tmp_path / 'tinyshakespeare.txt'}"):
        data.default_corpus_path()


def test_corrupt_cached_corpus_is_refused(tmp_path, monkeypatch):
    """A cached tiny Shakespeare that is not the real one (its SHA-256 differs) is refused, not trained
    on."""
    monkeypatch.setenv("BLU_CACHE", str(tmp_path))
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(BluError, match="SHA-256"):
        data.default_corpus_path()


def test_unreadable_file(tmp_path, monkeypatch):
    """A file the user may not read is one line naming the reason (a permission error), not a
    traceback."""
    path = tmp_path / "secret.txt"
    path.write_text("text")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "read_bytes", denied)  # chmod 000 does not stop root, who runs CI
    with pytest.raises(BluError, match="cannot read \\(Permission denied\\)"):
        data.read_corpus(path)
