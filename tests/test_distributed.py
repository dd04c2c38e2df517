"""Training on several processes with torchrun (gloo on this CPU, two processes, loopback only):
the same model as one process with the whole batch, the whole-split validation loss, exact
resumes after Ctrl-C and after a worker is killed, user errors that end every rank, two nodes."""

import json
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys
import time

from conftest import first_chars
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
import torch

from blu.data.batches import BatchSampler

# A tiny model that trains 60 steps in a few seconds; an evaluation (and a save) every 10 steps.
FLAGS = ["--dim", "32", "--n-layer", "2", "--n-head", "4", "--hidden-dim", "64", "--context", "64",
         "--eval-every", "10", "--lr", "3e-3", "--iters", "60"]
PER_PROCESS_BATCH = 4
TIMEOUT = 180  # seconds any one launch may take before the test calls it a hang


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a shared 2-core machine


LAUNCHED: list[subprocess.Popen] = []  # every launcher a test started, for the cleanup below


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Whatever a test asserted, its launchers and their workers (one process group each) are
    gone afterwards: a failed or hung test must not leave workers training on the machine."""
    yield
    while LAUNCHED:
        process = LAUNCHED.pop()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers a finished launcher left too
        except ProcessLookupError:
            pass  # the whole group had ended
        process.communicate()


def torchrun(*launcher_flags, args=(), cwd=None, script=None) -> subprocess.Popen:
    """`torchrun LAUNCHER_FLAGS -m blu train ARGS` (or `SCRIPT train ARGS`), started (not waited for)."""
    program = [str(script)] if script else ["-m", "blu"]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher_flags, *program, "train", *map(str, args)]
    process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    LAUNCHED.append(process)
    return process


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_step(run: Path) -> int:
    """The step of the last completed save of a run folder; -1 before the first."""
    try:
        with safe_open(run / "last" / "state.safetensors", framework="pt") as f:
            return json.loads(f.metadata()["state"])["step"]
    except Exception:  # not there yet, or being replaced
        return -1


def wait_for_save(run: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.time() + TIMEOUT
    while saved_step(run) < step:
        assert process.poll() is None, f"training ended before step {step} was saved: {process.communicate()[1][-2000:]}"
        assert time.time() < deadline, "no save in time"
        time.sleep(0.05)


def workers_of(launcher: subprocess.Popen) -> list[int]:
    """The worker processes torchrun started (its children)."""
    return [int(pid) for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(a: Path, b: Path) -> None:
    """Weights, optimizer moments and the sampler's generator of two runs, bit for bit."""
    first, second = load_file(a / "last" / "state.safetensors"), load_file(b / "last" / "state.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare) -> Path:
    """The small corpus, once for the module's runs."""
    return first_chars(shakespeare, tmp_path_factory.mktemp("corpus") / "small.txt")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus):
    """A 2-process run of 60 steps that nothing interrupts: (its folder, its stderr)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    code, out, err = finish(torchrun("--standalone", "--nproc-per-node", "2",
                                     args=["--data", corpus, "--out", run, "--batch-size", PER_PROCESS_BATCH, *FLAGS]))
    assert code == 0, err[-3000:]
    assert out == ""
    return run, err


def test_the_global_batch_is_drawn_from_the_seed_and_sliced_by_rank():
    """Each rank's windows are its slice of the windows one process draws with the whole batch,
    step after step: guards against ranks drawing from generators of their own (data that
    depends on the number of processes) or overlapping slices."""
    tokens = torch.randint(0, 50, (5000,)).numpy()
    whole = BatchSampler(tokens, 8, 16, seed=3)
    ranks = [BatchSampler(tokens, 4, 16, seed=3, rank=r, ranks=2) for r in (0, 1)]
    for _ in range(5):
        x, y = whole.next()
        parts = [sampler.next() for sampler in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))


def test_two_processes_train_like_one_with_the_whole_batch(straight, tmp_path, corpus, cli):
    """2 processes with batch B log the losses of 1 process with batch 2B: guards against
    gradients summed instead of averaged, ranks reading the same data, or a logged loss that
    is one rank's."""
    run, stderr = straight
    one = tmp_path / "one"
    code, _, err = cli("train", "--data", corpus, "--out", one, "--batch-size", 2 * PER_PROCESS_BATCH, *FLAGS)
    assert code == 0, err
    expected, got = rows(one), rows(run)
    assert [(r["step"], r["tokens"], sorted(r)) for r in got] == [(r["step"], r["tokens"], sorted(r)) for r in expected]
    for a, b in zip(expected, got):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    # Only rank 0 talks: one banner, one closing line, no progress from the other rank.
    assert stderr.count("blu 0.1.0:") == 1 and stderr.count("best val_loss") == 1
    assert "2 processes on cpu" in stderr


def test_val_loss_is_the_whole_split_as_one_process_scores_it(straight, cli):
    """The validation loss of a 2-process run (each rank scores half the windows) is the one
    `blu eval` computes on one process from the saved best weights: guards against a rank's
    half-split loss or windows counted twice."""
    run, _ = straight
    code, out, err = cli("eval", "--run", run, "--json", "--device", "cpu")
    assert code == 0, err
    best = min(r["val_loss"] for r in rows(run) if "val_loss" in r)
    assert json.loads(out)["val_loss"] == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("who", ["launcher", "worker"])
def test_ctrl_c_stops_every_rank_and_resuming_is_exact(straight, tmp_path, corpus, who, cli):
    """Ctrl-C to torchrun (which passes SIGTERM to every worker) or to one worker alone stops
    every rank after an agreed step, saves, and a resume ends bit-identical to the run that
    never stopped. Guards against ranks stopping at different steps (a hang in a collective)
    or a save that misses the sampler's state. A 2-process run also resumes on one process."""
    run = tmp_path / "run"
    launcher = torchrun("--standalone", "--nproc-per-node", "2",
                        args=["--data", corpus, "--out", run, "--batch-size", PER_PROCESS_BATCH, *FLAGS])
    wait_for_save(run, 20, launcher)
    os.kill(launcher.pid if who == "launcher" else workers_of(launcher)[-1], signal.SIGINT)
    code, _, err = finish(launcher)
    assert code != 0 and "stopped at step" in err and "--resume" in err  # torchrun reports stopped workers as failed
    stopped_at = saved_step(run)
    assert 20 <= stopped_at < 60 and rows(run)[-1]["step"] == stopped_at

    shutil.copytree(run, tmp_path / "copy")
    code, _, err = finish(torchrun("--standalone", "--nproc-per-node", "2", args=["--out", run, "--resume"]))
    assert code == 0, err[-3000:]
    assert_same_state(straight[0], run)

    # Another number of processes: the run goes on (with the same data), and says what changed.
    code, _, err = cli("train", "--out", tmp_path / "copy", "--resume")
    assert code == 0 and "trained on 2 processes and goes on with 1" in err, err
    assert saved_step(tmp_path / "copy") == 60


def test_a_killed_worker_is_restarted_and_the_run_resumes_by_itself(straight, tmp_path, corpus):
    """kill -9 of one worker: torchrun stops the other, starts the group again with the same
    command line (--max-restarts), and blu resumes every rank from the last save without being
    asked; the run ends as if nothing had happened (its saves fall every 10 steps, and the
    resumed steps are the same computation). Guards against a restart that trains from step 0,
    --force wiping the run on restart, or survivors left hanging."""
    run = tmp_path / "run"
    launcher = torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
                        args=["--data", corpus, "--out", run, "--force", "--batch-size", PER_PROCESS_BATCH, *FLAGS])
    wait_for_save(run, 20, launcher)
    os.kill(workers_of(launcher)[-1], signal.SIGKILL)
    code, _, err = finish(launcher)
    assert code == 0, err[-3000:]
    assert "resuming" in err and err.count("blu 0.1.0:") == 2  # the restarted group said so, once
    assert_same_state(straight[0], run)


# `blu` in which rank 1's training loss is infinite at its 5th and 6th micro-steps; the
# infinity is a constant added to the loss, so that rank's gradients stay finite.
INFINITE_LOSS_ON_RANK_1 = """
import os
import torch
import torch.nn.functional as F
from blu.cli import main
real, calls = F.cross_entropy, [0]
def poisoned(*args, **kwargs):
    loss = real(*args, **kwargs)
    if torch.is_grad_enabled() and os.environ["RANK"] == "1":
        calls[0] += 1
        if calls[0] in (5, 6):
            return loss + float("inf")
    return loss
F.cross_entropy = poisoned
raise SystemExit(main())
"""


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, corpus):
    """Only rank 1's loss is infinite (twice), its gradients finite: both ranks skip those two
    steps, so rank 0, which saw nothing wrong, logs them as skipped and the ranks keep the same
    weights. Guards against each rank deciding alone (rank 0 would step, rank 1 not)."""
    script = tmp_path / "poisoned_blu.py"
    script.write_text(INFINITE_LOSS_ON_RANK_1)
    run = tmp_path / "run"
    code, _, err = finish(torchrun("--standalone", "--nproc-per-node", "2", script=script,
                                   args=["--data", corpus, "--out", run, "--batch-size", PER_PROCESS_BATCH, *FLAGS[:-1], "20"]))
    assert code == 0, err[-3000:]
    skipped = [r for r in rows(run) if "skipped" in r]
    assert [r["step"] for r in skipped] == [4, 4]  # steps 5 and 6 were tried at step 4 and skipped
    assert saved_step(run) == 20


def test_a_time_budget_ends_every_rank_at_the_same_step(tmp_path, corpus):
    """With --time, rank 0's clock decides for all: every rank stops after the same step and
    evaluates once more together. Guards against ranks reading their own clocks and one of
    them waiting in a collective the others never join."""
    run = tmp_path / "run"
    code, _, err = finish(torchrun("--standalone", "--nproc-per-node", "2",
                                   args=["--data", corpus, "--out", run, "--batch-size", PER_PROCESS_BATCH,
                                         *FLAGS[:-2], "--time", "3"]))
    assert code == 0, err[-3000:]
    last = rows(run)[-1]
    assert "val_loss" in last and last["elapsed_s"] >= 3 and last["step"] == saved_step(run)


@pytest.mark.parametrize("problem", [["--no-such-flag"], ["--data", "missing.txt"]])
def test_a_user_error_ends_every_rank_with_code_2_and_one_message(tmp_path, corpus, problem):
    """A bad flag (every rank finds it) or a missing file (rank 0 finds it while the others
    wait for it to prepare the run) prints one line once, and every process exits with code 2
    at once. The two ranks are started as torchrun starts them (its environment variables),
    so that each one's exit code can be read. Guards against a rank left waiting forever."""
    port = free_port()
    workers = []
    for rank in (0, 1):
        env = {**environment(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        workers.append(subprocess.Popen([sys.executable, "-m", "blu", "train", "--out", str(tmp_path / "run"), *problem],
                                        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True))
    results = [(w.wait(timeout=TIMEOUT), w.stderr.read()) for w in workers]
    assert [code for code, _ in results] == [2, 2]
    messages = [line for _, err in results for line in err.splitlines() if "error" in line]
    assert len(messages) == 1 and results[0][1].strip() == messages[0], results


def test_two_nodes_on_this_machine_train_one_model(straight, tmp_path, corpus):
    """Two torchrun commands, one process each, meeting by a c10d rendezvous on loopback, train
    the same model as one torchrun with two processes (the data does not depend on where the
    processes run)."""
    run, port = tmp_path / "run", free_port()
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "blu-test"]
    args = ["--data", corpus, "--out", run, "--batch-size", PER_PROCESS_BATCH, *FLAGS]
    nodes = [torchrun(*rendezvous, args=args) for _ in range(2)]
    results = [finish(node) for node in nodes]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert sum(err.count("best val_loss") for _, _, err in results) == 1  # rank 0, on whichever node it is
    assert_same_state(straight[0], run)
