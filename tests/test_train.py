"""The training loop on real text: it learns, it saves, it resumes exactly."""

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from blu.checkpoint import load_run, save_config
from blu.config import ModelConfig, TrainConfig, to_dict
from blu.data import read_corpus, split
from blu.tokenizer import CharTokenizer
from blu.evaluate import evaluate
from blu.train import train

MODEL = dict(dim=48, n_layer=2, n_head=4, n_kv_head=2, hidden_dim=128, context=32)


def prepare(run_dir, corpus, **train_change):
    text = read_corpus(corpus)
    tokenizer = CharTokenizer.from_text(text)
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, **MODEL)
    config = TrainConfig(**{**dict(batch_size=16, lr=3e-3, warmup_iters=10, eval_every=20, iters=60, log_every=5,
                                   sample_chars=20), **train_change})
    meta = {"preset": "test", "model": to_dict(model_config), "train": to_dict(config),
            "data": {"path": str(corpus), "sha256": "", "chars": len(text)}}
    save_config(run_dir, meta, tokenizer)
    train_tokens, val_tokens = split(tokenizer.encode_array(text)[0], model_config.context)
    return model_config, config, tokenizer, train_tokens, val_tokens


def test_short_run_on_tiny_shakespeare_learns_and_fills_the_run_folder(tmp_path, shakespeare):
    run = tmp_path / "run"
    model_config, config, tokenizer, train_tokens, val_tokens = prepare(run, shakespeare, iters=80, eval_every=40)
    torch.manual_seed(0)
    from blu.model import Transformer

    initial, _ = evaluate(Transformer(model_config), val_tokens)
    state = train(run, model_config, config, tokenizer, train_tokens, val_tokens, torch.device("cpu"), log=lambda m: None)
    assert state["step"] == 80 and not state["interrupted"]
    assert abs(initial - math.log(tokenizer.vocab_size)) < 0.2
    assert state["best_val_loss"] < initial - 1.0  # ln(66) = 4.19 -> well below 3.2

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [40, 80]
    assert all({"step", "tokens", "elapsed_s", "val_bpc"} <= set(r) for r in evals)
    assert any("train_loss" in r for r in rows)
    assert evals[-1]["val_bpc"] == pytest.approx(evals[-1]["val_loss"] / math.log(2))
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "samples.txt").read_text().count("--- step") == 2

    # The run folder round-trips: the best weights load and score what training measured.
    _, model, _ = load_run(run)
    assert evaluate(model, val_tokens)[0] == pytest.approx(state["best_val_loss"], abs=1e-6)


def test_evaluation_covers_every_validation_token(tmp_path, small_corpus):
    model_config, _, _, _, val_tokens = prepare(tmp_path / "run", small_corpus)
    from blu.model import Transformer

    _, count = evaluate(Transformer(model_config), val_tokens, batch_size=7)
    assert count == len(val_tokens) - 1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_run_resumes_exactly(tmp_path, small_corpus, optimizer):
    """A run stopped by Ctrl-C at step 30 and resumed ends with the same weights,
    optimizer and RNG state as one that never stopped."""
    cpu = torch.device("cpu")
    straight = tmp_path / "straight"
    train(straight, *prepare(straight, small_corpus, iters=60, eval_every=30, optimizer=optimizer), cpu, log=lambda m: None)

    def press_ctrl_c_at_step_30(message):
        if message.startswith("step 30:"):
            os.kill(os.getpid(), signal.SIGINT)

    stopped = tmp_path / "stopped"
    args = prepare(stopped, small_corpus, iters=60, eval_every=30, optimizer=optimizer)
    state = train(stopped, *args, cpu, log=press_ctrl_c_at_step_30)
    assert state["interrupted"] and state["step"] == 30
    state = train(stopped, *args, cpu, resume=True, log=lambda m: None)
    assert state["step"] == 60 and not state["interrupted"]

    a = load_file(straight / "last" / "state.safetensors")
    b = load_file(stopped / "last" / "state.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_compiled_training_matches_eager(tmp_path, small_corpus):
    cpu = torch.device("cpu")
    results = {}
    for compile_model in (False, True):
        run = tmp_path / str(compile_model)
        args = prepare(run, small_corpus, iters=20, eval_every=1000, compile=compile_model)
        notes = []
        results[compile_model] = train(run, *args, cpu, log=notes.append)["best_val_loss"]
        assert not any("does not work here" in n for n in notes), notes
    assert results[True] == pytest.approx(results[False], abs=0.01)


def test_training_goes_on_without_compile_where_it_cannot_work(tmp_path, small_corpus, monkeypatch):
    def broken_compile(model):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    run = tmp_path / "run"
    notes = []
    state = train(run, *prepare(run, small_corpus, iters=5, compile=True), torch.device("cpu"), log=notes.append)
    assert state["step"] == 5
    assert any("torch.compile does not work here (RuntimeError: no C++ compiler found)" in n for n in notes)
