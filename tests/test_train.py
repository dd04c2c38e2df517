"""The training loop on real text: it learns, it saves, it resumes exactly."""

import json
import math
import os
import signal

import pytest
from safetensors import safe_open
from safetensors.torch import load_file
import torch
import torch.nn.functional as F

from blu.errors import BluError
from blu.evaluate import evaluate
from blu.runs import load_run, resume_run
from blu.train import TrainState, new_model, train

CPU = torch.device("cpu")


def quiet(message):
    pass


def test_short_run_on_tiny_shakespeare_learns_and_fills_the_run_folder(tmp_path, shakespeare, make_run):
    run = make_run(tmp_path / "run", shakespeare, iters=80, eval_every=40)
    initial = evaluate(new_model(run.model_config, run.train_config.seed), run.val_tokens).loss
    state, interrupted = train(run, CPU, log=quiet)
    assert state.step == 80 and not interrupted
    assert abs(initial - math.log(run.tokenizer.vocab_size)) < 0.2
    assert state.best_val_loss < initial - 1.0  # ln(66) = 4.19 -> well below 3.2

    rows = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [40, 80]
    assert all({"step", "tokens", "elapsed_s", "val_bpc", "val_bpb"} <= set(r) for r in evals)
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_bpc"])  # ASCII text, one byte per character
    assert any("train_loss" in r for r in rows)
    assert evals[-1]["val_bpc"] == pytest.approx(evals[-1]["val_loss"] / math.log(2))
    assert (run.folder / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run.folder / "samples.txt").read_text().count("--- step") == 2

    # The run folder round-trips: the best weights load and score what training measured.
    _, model, _ = load_run(run.folder)
    assert evaluate(model, run.val_tokens).loss == pytest.approx(state.best_val_loss, abs=1e-6)
    # last/ holds the training state and nothing of the loop's own bookkeeping.
    with safe_open(run.folder / "last" / "state.safetensors", framework="pt") as f:
        saved = json.loads(f.metadata()["state"])
    assert TrainState(**saved) == state


def test_evaluation_covers_every_validation_token(tmp_path, small_corpus, make_run):
    """The whole-split loss is the mean over every token after the first, each predicted once
    within consecutive windows of the context that start from nothing (the last one shorter),
    whatever the batch size: guards against a window or the short tail going missing, counted
    twice, or seeing padding."""
    run = make_run(tmp_path / "run", small_corpus)
    context = run.model_config.context
    model = new_model(run.model_config, 0)
    with torch.no_grad():
        model.output.weight *= 50  # confident predictions: each token's loss differs, so a missing one shows
    tokens = run.val_tokens[:300]  # 299 targets: 9 windows of 32 and one of 11
    assert (len(tokens) - 1) % context
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, context):  # brute force: one window at a time, unpadded
            window = torch.from_numpy(tokens[start : start + context + 1].astype("int64"))
            total += F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="sum").item()
            count += len(window) - 1
    assert count == len(tokens) - 1
    for batch_size in (1, 4, 9, 64):  # uneven last batches, one window per batch, all in one
        loss, n, _, _ = evaluate(model, tokens, batch_size)
        assert n == count and loss == pytest.approx(total / count, rel=1e-5), batch_size


def stopped_and_resumed_matches_straight(tmp_path, small_corpus, make_run, **changes):
    """Train 60 steps straight, and 60 steps stopped by Ctrl-C at step 30 then resumed;
    assert that both end with the same last/state.safetensors, bit for bit."""
    straight = make_run(tmp_path / "straight", small_corpus, iters=60, eval_every=30, **changes)
    train(straight, CPU, log=quiet)

    def press_ctrl_c_at_step_30(message):
        if message.startswith("step 30:"):
            os.kill(os.getpid(), signal.SIGINT)

    stopped = make_run(tmp_path / "stopped", small_corpus, iters=60, eval_every=30, **changes)
    state, interrupted = train(stopped, CPU, log=press_ctrl_c_at_step_30)
    assert interrupted and state.step == 30
    state, interrupted = train(resume_run(stopped.folder), CPU, log=quiet)
    assert state.step == 60 and not interrupted

    a = load_file(straight.folder / "last" / "state.safetensors")
    b = load_file(stopped.folder / "last" / "state.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_run_resumes_exactly(tmp_path, small_corpus, make_run, optimizer):
    """A run stopped by Ctrl-C at step 30 and resumed ends with the same weights,
    optimizer and RNG state as one that never stopped."""
    stopped_and_resumed_matches_straight(tmp_path, small_corpus, make_run, optimizer=optimizer)


def test_interrupted_run_with_dropout_resumes_exactly(tmp_path, small_corpus, make_run):
    """Dropout masks are random draws too: a resumed run must draw the ones it would have drawn.
    Guards against masks from the global generator, which a resume re-seeds instead of restoring."""
    stopped_and_resumed_matches_straight(tmp_path, small_corpus, make_run, dropout=0.1)


def test_saved_state_of_an_older_blu_still_loads():
    """The saved state is the dataclass's fields; state saved by an older blu, which also held
    loop variables, still loads (they are ignored), and a damaged one is refused in one line."""
    old = {"step": 30, "tokens": 15360, "elapsed_s": 2.5, "best_val_loss": 2.1, "skipped_steps": 1,
           "evaluated_step": 30, "faults_in_a_row": 0}
    assert TrainState.from_saved(old, "x") == TrainState(30, 15360, 2.5, 2.1, 1)
    assert TrainState.from_saved({"step": 3}, "x") == TrainState(step=3)
    for bad in ({"step": "3"}, {"best_val_loss": "low"}, {"tokens": 1.5}, {"step": True}, ["step"]):
        with pytest.raises(BluError, match="training state"):
            TrainState.from_saved(bad, "x")


def test_a_time_budget_stops_at_the_first_step_past_it(tmp_path, small_corpus, make_run):
    """A --time run stops at the first step that ends past the budget, then evaluates once more."""
    run = make_run(tmp_path / "run", small_corpus, time_s=2.0, log_every=1, eval_every=10_000)
    state, _ = train(run, CPU, log=quiet)
    rows = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, state.step + 1))  # every step logged
    assert steps[-1]["elapsed_s"] >= 2.0 and steps[-2]["elapsed_s"] <= 2.0
    assert rows[-1]["step"] == state.step and "val_loss" in rows[-1]
    # The schedule is keyed to the spent fraction of the time: the last steps ran decayed.
    assert steps[-1]["lr"] < 0.5 * max(r["lr"] for r in steps)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_compiled_training_matches_eager(tmp_path, small_corpus, make_run, dropout):
    """--compile trains the same model; with dropout too, whose masks come from an explicit
    generator that the compiler does not trace (it breaks the graph there)."""
    results = {}
    for compile_model in (False, True):
        run = make_run(tmp_path / str(compile_model), small_corpus, iters=20, eval_every=1000, compile=compile_model,
                       dropout=dropout)
        notes = []
        results[compile_model] = train(run, CPU, log=notes.append).state.best_val_loss
        assert not any("does not work here" in n for n in notes), notes
    assert results[True] == pytest.approx(results[False], abs=0.01)


def test_training_goes_on_without_compile_where_it_cannot_work(tmp_path, small_corpus, make_run, monkeypatch):
    def broken_compile(model):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    notes = []
    state, _ = train(make_run(tmp_path / "run", small_corpus, iters=5, compile=True), CPU, log=notes.append)
    assert state.step == 5
    assert any("torch.compile does not work here (RuntimeError: no C++ compiler found)" in n for n in notes)
