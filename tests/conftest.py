"""Shared fixtures: the tiny Shakespeare corpus (never downloaded) and small corpora."""

import os
from pathlib import Path
import shutil

import pytest

REPO = Path(__file__).resolve().parents[1]


def shakespeare_path() -> Path:
    """$BLU_SHAKESPEARE, or the copy in ../shared/data beside the repository."""
    path = Path(os.environ.get("BLU_SHAKESPEARE") or REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
    if not path.is_file():
        pytest.fail(f"tiny Shakespeare not found at {path}; set BLU_SHAKESPEARE to its path")
    return path


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    return shakespeare_path()


@pytest.fixture
def blu_cache(tmp_path, monkeypatch, shakespeare) -> Path:
    """A cache folder that already holds tiny Shakespeare, so `blu train` without --data works offline."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(shakespeare, cache / "tinyshakespeare.txt")
    monkeypatch.setenv("BLU_CACHE", str(cache))
    return cache


@pytest.fixture
def small_corpus(tmp_path, shakespeare) -> Path:
    """The first 60,000 characters of tiny Shakespeare, for quick training runs."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path
