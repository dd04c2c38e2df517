"""The training loop on real text: it learns, it saves, it resumes exactly."""

import json
import math
import os
import signal
import time

from conftest import assert_same_saved_state, ctrl_c_at_step
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
import torch
import torch.nn.functional as F

from blu import train as training
from blu.checkpoint import TrainState
from blu.config import Budget, ModelConfig
from blu.errors import BluError
from blu.evaluate import evaluate
from blu.metrics import MetricsLog
from blu.runs import load_run, resume_run
from blu.serve.watch import TrainingView
from blu.train import Trainer, new_model, train

CPU = torch.device("cpu")


def quiet(message):
    pass


def test_short_run_on_tiny_shakespeare_learns_and_fills_the_run_folder(tmp_path, shakespeare, make_run):
    """A short run learns (well below the initial ln-vocabulary loss), logs train and validation rows
    with per-character figures for char, plots, samples, and its saved weights score what training
    measured."""
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

    stopped = make_run(tmp_path / "stopped", small_corpus, iters=60, eval_every=30, **changes)
    state, interrupted = train(stopped, CPU, log=ctrl_c_at_step(30))
    assert interrupted and state.step == 30
    state, interrupted = train(resume_run(stopped.folder), CPU, log=quiet)
    assert state.step == 60 and not interrupted

    assert_same_saved_state(straight.folder, stopped.folder)


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
    for bad in ({"step": "3"}, {"best_val_loss": "low"}, {"tokens": 1.5}, {"step": True}, {"evaluated": 1}, ["step"]):
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
    """Where torch.compile cannot work (no C++ compiler), training says so once and trains without it
    instead of failing."""
    def broken_compile(model):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    notes = []
    state, _ = train(make_run(tmp_path / "run", small_corpus, iters=5, compile=True), CPU, log=notes.append)
    assert state.step == 5
    assert any("torch.compile does not work here (RuntimeError: no C++ compiler found)" in n for n in notes)


def test_evaluation_leaves_the_model_in_the_mode_it_found():
    """`blu eval` scores a model loaded in eval mode: evaluate once ended by switching every model
    to training mode (dropout on), whatever it had been."""
    model = new_model(ModelConfig(vocab_size=20, dim=16, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=32, context=8), 0)
    tokens = torch.arange(40).remainder(20).numpy()
    for mode in (False, True):
        model.train(mode)
        evaluate(model, tokens)
        assert model.training is mode


def test_a_second_ctrl_c_skips_the_final_evaluation_and_loses_nothing(tmp_path, small_corpus, make_run, monkeypatch):
    """The first Ctrl-C says at once that training stops, saves and evaluates; a second one during
    that evaluation ends it at once and saves the training state instead. Guards against silence,
    a second Ctrl-C that loses the steps since the last save, and a resumed run that forgets the
    skipped evaluation; the run still ends bit-identical to one never stopped."""
    straight = make_run(tmp_path / "straight", small_corpus, iters=60)
    train(straight, CPU, log=quiet)
    real_step, real_validate, notes = Trainer.step, Trainer.validate, []

    def step(self, forward):
        agreed = real_step(self, forward)
        if self.state.step == 25:
            os.kill(os.getpid(), signal.SIGINT)
            assert notes[-1] == "stopping: saving and running the final evaluation (Ctrl-C again to skip it)"
        return agreed

    def validate(self):
        if self.state.step == 25:
            os.kill(os.getpid(), signal.SIGINT)
        return real_validate(self)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "validate", validate)
    stopped = make_run(tmp_path / "stopped", small_corpus, iters=60)
    state, interrupted = train(stopped, CPU, log=notes.append)
    assert interrupted and state.step == 25 and not state.evaluated
    assert notes[-3:] == ["skipping the final evaluation: saving the training state (Ctrl-C again to stop at once, keeping "
                          "the last save)", "step 25: saved without evaluating",
                          f"stopped at step 25 and saved; continue with: blu train --out {stopped.folder} --resume"]
    rows = MetricsLog(stopped.folder).rows()
    assert [r["step"] for r in rows if "val_loss" in r] == [20]  # step 25 was not evaluated
    monkeypatch.undo()
    state, _ = train(resume_run(stopped.folder, Budget(iters=25)), CPU, log=quiet)  # nothing left to train
    assert state.step == 25 and state.evaluated and MetricsLog(stopped.folder).rows()[-1]["step"] == 25
    state, _ = train(resume_run(stopped.folder), CPU, log=quiet)
    a, b = load_file(straight.folder / "last" / "state.safetensors"), load_file(stopped.folder / "last" / "state.safetensors")
    assert state.step == 60 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_budget_buys_training_not_set_up(tmp_path, small_corpus, make_run, monkeypatch):
    """The --time clock starts at the first step: set-up that takes longer than the budget (here a
    compile that takes 3 s) once spent it all, leaving one step. The log says what it is doing."""
    def slow_compile(model, batch_shape, device, log):
        time.sleep(3)
        return model

    monkeypatch.setattr(training, "compile_for_training", slow_compile)
    notes = []
    run = make_run(tmp_path / "run", small_corpus, time_s=1.5, compile=True, log_every=1, eval_every=10_000)
    state, _ = train(run, CPU, log=notes.append)
    steps = [r for r in MetricsLog(run.folder).rows() if "train_loss" in r]
    # Had the clock counted the 3 s compile, the first step would be logged past 3 s and the
    # budget would be spent after one step. (No upper bound on the end: a busy machine stretches a step.)
    assert steps[0]["elapsed_s"] < 3 and state.step > 5 and state.elapsed_s >= 1.5
    assert notes[0] == "compiling the model for training (torch.compile; the budget's clock starts after it)"


def test_metrics_have_one_reader_that_skips_a_line_cut_short(tmp_path):
    """metrics.jsonl is read by the training loop (resume, plot) and the server's training view:
    one reader, so both leave out the line a kill cut short, and nothing that is not a row."""
    log = MetricsLog(tmp_path)
    log.write({"step": 1, "train_loss": 2.0, "elapsed_s": 0.1, "tokens": 8})
    with open(log.path, "a") as f:
        f.write('3\n{"step": 2, "train_lo')
    assert log.rows() == [{"step": 1, "train_loss": 2.0, "elapsed_s": 0.1, "tokens": 8}]
    assert TrainingView(tmp_path).read()["rows"] == log.rows()
