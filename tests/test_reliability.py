"""Nothing lost, nothing crashes: faults, kills, full disks, hostile run folders, fuzzed input."""

import json
import os
from pathlib import Path
import pickle
import signal
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
from safetensors.torch import load_file
import torch

from blu.cli.parser import parse_duration
from blu.config import SamplingOptions
from blu.data import text as data
from blu.errors import BluError
from blu.files import atomic_write
from blu.model import Transformer
from blu.runs import load_run
from blu.sampling import sample
from blu.tokenizers import CharTokenizer
from blu.train import train


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, small_corpus, make_run, monkeypatch):
    """A step whose loss is not finite is skipped, so neither the weights nor the optimizer ever see a
    NaN, and training goes on; five in a row stop it with the last good state saved."""
    real = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, idx):  # NaN logits in training forwards 5-6, then in every one from the 20th
        logits = real(self, idx)
        if not self.training:
            return logits  # evaluation and sampling see the real model
        calls["n"] += 1
        return logits * float("nan") if calls["n"] in (5, 6) or calls["n"] >= 20 else logits

    monkeypatch.setattr(Transformer, "forward", poisoned)
    run = make_run(tmp_path / "run", small_corpus, iters=60, eval_every=1000)
    with pytest.raises(BluError, match="5 steps in a row had a non-finite loss"):
        train(run, torch.device("cpu"), log=lambda m: None)
    rows = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    assert sum("skipped" in r for r in rows) == 2 + 5
    assert rows[-1]["step"] == 19 - 2 and torch.isfinite(torch.tensor(rows[-1]["val_loss"]))  # evaluated, then saved
    _, model, _ = load_run(run.folder)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = load_file(run.folder / "last" / "state.safetensors")  # weights and optimizer moments
    assert all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())
    assert json.loads(load_state_json(run.folder))["step"] == 19 - 2


def load_state_json(run: Path) -> str:
    from safetensors import safe_open

    with safe_open(run / "last" / "state.safetensors", framework="pt") as f:
        return f.metadata()["state"]


def test_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    """A save that hits a full disk is one line and keeps the previous file, leaving no temporary file
    behind."""
    path = tmp_path / "model.safetensors"
    atomic_write(path, b"previous")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BluError, match="No space left on device.*previous version is kept"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left behind


def test_weights_replaced_while_read_are_a_one_line_error(tmp_path):
    """`blu serve` reloads model.safetensors while training renames new weights over it; a read
    that a rename interrupts is a BluError (the engine keeps its weights), never a crash."""
    from blu.checkpoint import load_weights, save_model
    from blu.config import ModelConfig

    shape = dict(vocab_size=65, dim=32, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=64)
    model = Transformer(ModelConfig(**shape))
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    saver = subprocess.Popen([sys.executable, "-c", f"""
from blu.checkpoint import write_tensors, model_tensors
from blu.config import ModelConfig
from blu.model import Transformer
tensors = model_tensors(Transformer(ModelConfig(**{shape!r})))
for i in range(1_000_000):  # headers of two lengths, as the step in a save's metadata grows
    write_tensors({str(path)!r}, tensors, {{"step": "9" * (i % 2) * 8}})
"""])
    caught, deadline = None, time.monotonic() + 60
    try:
        while caught is None and time.monotonic() < deadline:  # a few hundred reads hit it here
            try:
                load_weights(model, path)
            except BluError as error:
                caught = str(error)
    finally:
        saver.kill()
    assert caught is not None and "replaced while it was read" in caught


def test_a_pickle_in_a_run_folder_is_never_executed(tmp_path, small_corpus, cli, tiny_flags):
    """Weights replaced by a pickle are refused as corrupt and never executed: loading a run folder
    runs no code from it."""
    run = tmp_path / "run"
    assert cli("train", "--data", small_corpus, "--out", run, "--iters", 2, *tiny_flags)[0] == 0
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (run / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(BluError, match="truncated or corrupt"):
        load_run(run)
    assert not marker.exists()


def test_absurd_sizes_in_config_json_are_refused_before_allocating(tmp_path, small_corpus, cli, tiny_flags):
    """A config.json edited to an absurd size is refused in one line before any memory is allocated."""
    run = tmp_path / "run"
    assert cli("train", "--data", small_corpus, "--out", run, "--iters", 2, *tiny_flags)[0] == 0
    config = json.loads((run / "config.json").read_text())
    config["model"].update(dim=65536, hidden_dim=1 << 20)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(BluError, match="more than blu is built for"):
        load_run(run)


def test_sigterm_saves_and_says_how_to_resume(tmp_path, small_corpus):
    """SIGTERM (as a scheduler sends it) stops training after the step, saves, says how to resume,
    exits 130, and the run loads."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "blu", "train", "--data", str(small_corpus), "--out", str(run),
               "--iters", "100000", "--dim", "32", "--n-layer", "1", "--n-head", "2", "--context", "32"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "--resume" in stderr.splitlines()[-2] and "Traceback" not in stderr
    state = json.loads(load_state_json(run))
    assert 0 < state["step"] < 100000
    load_run(run)


def test_killed_three_times_then_resumed_ends_like_an_uninterrupted_run(tmp_path, small_corpus):
    """kill -9 at moments spread over the run (mid-training, around an evaluation, during a save)
    never loses the folder, and resuming each time ends with the same weights as a run that never stopped."""
    from safetensors import SafetensorError

    flags = ["--data", str(small_corpus), "--iters", "120", "--eval-every", "5", "--dim", "32", "--n-layer", "1",
             "--n-head", "2", "--context", "32", "--batch-size", "8"]

    def blu(*args):
        return subprocess.Popen([sys.executable, "-m", "blu", "train", *args], stderr=subprocess.DEVNULL)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert blu(*flags, "--out", str(straight)).wait() == 0
    state_file = killed / "last" / "state.safetensors"

    def saved_step() -> int:  # the step of the last completed save; -1 before the first
        try:
            return json.loads(load_state_json(killed))["step"]
        except (OSError, KeyError, ValueError, SafetensorError, RuntimeError):  # RuntimeError: safe_open
            return -1  # caught a save's rename between its two opens of the path (a size and a header)

    def logged_step() -> int:  # the step of the last whole row of metrics.jsonl; 0 before the first
        try:
            lines = (killed / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return 0
        steps = [0]
        for line in lines:
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:  # a row being written
                pass
        return steps[-1]

    # When each process is killed: training on just after the save of step 25; around the
    # evaluation of step 60, before its save completes; while a save is under way.
    moments = (lambda: saved_step() >= 25, lambda: logged_step() >= 60,
               lambda: any((killed / "last").glob(".state*")))
    for i, moment in enumerate(moments):
        process = blu(*flags, "--out", str(killed)) if i == 0 else blu("--out", str(killed), "--resume")
        while not (reached := moment()) and process.poll() is None:
            pass
        assert reached and process.poll() is None, "the run ended before it could be killed"
        process.kill()
        process.wait()
        if state_file.exists():
            load_run(killed)  # the folder still loads
    process = blu("--out", str(killed), "--resume")
    assert process.wait() == 0
    assert not list(killed.rglob(".*.*")), "resuming removes the temporary files of interrupted saves"
    a, b = load_file(straight / "last" / "state.safetensors"), load_file(killed / "last" / "state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # rows logged after the last save of a killed process were dropped


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_tokenizer_round_trip(text):
    """A char tokenizer built from any text decodes exactly what it encodes."""
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    ids, unknown = tok.encode_array(text)
    assert unknown == 0 and tok.decode(ids.tolist()) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_fuzz_duration_parser(text):
    """Any string given to --time is a positive duration or one BluError, never a crash."""
    try:
        assert parse_duration(text) > 0
    except BluError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_corpus_loading(tmp_path_factory, content):
    """Any bytes as a corpus are read exactly as UTF-8 text or refused in one line, never a crash or a
    lossy decode."""
    path = tmp_path_factory.mktemp("fuzz") / "corpus.txt"
    path.write_bytes(content)
    try:
        text = data.read_corpus(path)
        assert text.encode("utf-8") == content
    except BluError as error:
        assert "\n" not in str(error)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True), st.integers(-5, 100), st.floats(allow_nan=True), st.floats(allow_nan=True),
       st.floats(allow_nan=True))
def test_fuzz_sampling_parameters(temperature, top_k, top_p, min_p, penalty):
    """Any sampling values are refused by validate or sample a valid token: none crashes sampling."""
    options = SamplingOptions(temperature, top_k, top_p, min_p, penalty)
    try:
        options.validate()
    except BluError:
        return
    logits = torch.randn(2, 10)
    token = sample(logits, options, torch.Generator().manual_seed(0), torch.tensor([[1, 2], [3, 4]]))
    assert token.shape == (2,) and ((0 <= token) & (token < 10)).all()


def test_ctrl_c_asks_to_stop_then_to_skip_the_evaluation_then_interrupts():
    """The first Ctrl-C asks to stop (and says so at once), the second to skip the final evaluation
    (ending one that is running at once), the third interrupts; under torchrun the second does.
    Guards against a silent Ctrl-C, a second that cannot skip, and handlers left installed."""
    from blu.distributed import SkipEvaluation, StopRequest

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job of a script
    said = []
    stop = StopRequest(said.append)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and not stop.skip_evaluation and said == [1]
        with pytest.raises(SkipEvaluation), stop.skippable():
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.skip_evaluation and said == [1, 2]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored afterwards
    shared = StopRequest(can_skip=False)
    with shared.installed():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
