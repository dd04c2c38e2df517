"""Shared fixtures and helpers: the tiny Shakespeare corpus (never downloaded), small corpora,
tiny models and runs, and corpora read whole in memory to check what the streamed pipeline did."""

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


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory):
    """Token shards made by tests (and by the blu processes they start) go to a folder of the
    session, never to the user's cache; `blu_cache` gives a test one of its own."""
    os.environ["BLU_CACHE"] = str(tmp_path_factory.mktemp("blu-cache"))


@pytest.fixture
def blu_cache(tmp_path, monkeypatch, shakespeare) -> Path:
    """A cache folder that already holds tiny Shakespeare, so `blu train` without --data works offline."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(shakespeare, cache / "tinyshakespeare.txt")
    monkeypatch.setenv("BLU_CACHE", str(cache))
    return cache


SMALL_CORPUS_CHARS = 60_000
# `blu train` flags for a model that trains in seconds, without the tokenizer (tiny_flags adds char).
TINY_MODEL_FLAGS = ("--dim", "32", "--n-layer", "2", "--n-head", "4", "--hidden-dim", "64", "--context", "64",
                    "--batch-size", "8", "--eval-every", "10", "--lr", "3e-3")


def first_chars(shakespeare: Path, path: Path, chars: int = SMALL_CORPUS_CHARS) -> Path:
    """`path`, written with the first `chars` characters of tiny Shakespeare: a corpus for quick runs."""
    path.write_text(shakespeare.read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path, shakespeare) -> Path:
    """The first 60,000 characters of tiny Shakespeare, for quick training runs."""
    return first_chars(shakespeare, tmp_path / "small.txt")


@pytest.fixture(scope="session")
def tiny():
    """A function making a tiny ModelConfig (vocabulary 67, dim 64, 2 layers, context 32), with changes."""
    from blu.config import ModelConfig

    def make(**change) -> ModelConfig:
        base = dict(vocab_size=67, dim=64, n_layer=2, n_head=4, n_kv_head=4, hidden_dim=96, context=32)
        return ModelConfig(**{**base, **change})

    return make


@pytest.fixture
def cli(capfd):
    """A function running `blu ARGS...` in this process as a user would: (exit code, stdout, stderr)."""
    from blu.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """`blu train` flags for a char model that trains in seconds."""
    return ["--tokenizer", "char", *TINY_MODEL_FLAGS]


@pytest.fixture(scope="session")
def make_run():
    """A function creating a small run in `folder` on `corpus` with blu.runs.create_run, as `blu
    train` does: the cpu preset with a tiny model and the char tokenizer, 60 steps, frequent
    evaluations and logs, and `changes` on top (ModelConfig or TrainConfig fields; iters and
    time_s set the budget; tokenizer another kind)."""
    from blu.config import Budget, TextSettings
    from blu.runs import create_run

    def make(folder, corpus, **changes):
        settings = {**dict(dim=48, n_layer=2, n_head=4, n_kv_head=2, hidden_dim=128, context=32, batch_size=16, lr=3e-3,
                           warmup_iters=10, eval_every=20, log_every=5, sample_chars=20), **changes}
        time_s = settings.pop("time_s", None)
        budget = Budget(settings.pop("iters", None if time_s else 60), time_s)
        text = TextSettings(data=str(corpus), tokenizer=settings.pop("tokenizer", "char"))
        return create_run(folder, text, preset="cpu", overrides=settings, budget=budget, device="cpu")

    return make


@pytest.fixture(scope="session")
def served_run(tmp_path_factory, shakespeare) -> Path:
    """A tiny run trained by `blu train` (20 steps) for the `blu serve` tests; copy it before changing it."""
    from serve_support import corpus, train_tiny

    folder = tmp_path_factory.mktemp("served")
    return train_tiny(corpus(folder, shakespeare), folder / "shakes")


@pytest.fixture(scope="session")
def chat_runs(tmp_path_factory, shakespeare) -> tuple[Path, Path]:
    """(a small random Llama imported with a ChatML template, its 80-step fine-tune on
    conversations that all get chat_support.REPLY) for the tests of chatting; copy before changing."""
    from chat_support import imported_chatml_run, tuned_chat_run

    folder = tmp_path_factory.mktemp("chat")
    text = shakespeare.read_text(encoding="utf-8")
    parent = imported_chatml_run(folder, text)
    return parent, tuned_chat_run(folder, parent, text, iters=80)


def read_documents(path, ext=None, text_field: str = "text") -> list[str]:
    """Every document below `path`, whole, in order, all in memory: what the streamed reading must give."""
    from blu.data.sources import Source

    source, documents, current = Source(Path(path), ext, text_field), [], []
    for file in source.files:
        for piece, last in source.read(file):
            current.append(piece)
            if last:
                documents.append("".join(current))
                current = []
    return documents


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training and validation documents of a list in memory, by the rule Corpus.scan applies
    while streaming (each document's seeded hash, then choose_validation)."""
    from blu.data.split import _score, _score_hash, choose_validation

    scores = [_score(_score_hash(seed, d)) for d in documents]
    kept = set(choose_validation(scores, [len(d) for d in documents], fraction))
    return [d for i, d in enumerate(documents) if i not in kept], [d for i, d in enumerate(documents) if i in kept]


def ctrl_c_at_step(step: int):
    """A training log function that sends this process SIGINT (a user's Ctrl-C) when step `step` is logged."""
    import signal

    def log(message):
        if message.startswith(f"step {step}:"):
            os.kill(os.getpid(), signal.SIGINT)

    return log


def assert_same_saved_state(folder_a: Path, folder_b: Path) -> None:
    """Two runs' last saved states (weights, optimizer, RNG) are identical, tensor for tensor."""
    from safetensors.torch import load_file
    import torch

    a, b = (load_file(Path(f) / "last" / "state.safetensors") for f in (folder_a, folder_b))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
