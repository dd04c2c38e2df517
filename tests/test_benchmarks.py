"""Every script in benchmarks/ runs end to end in its --smoke mode (a tiny model, a few steps or
tokens): no benchmark rots unseen, as serve_speed.py did. The scripts run as a user runs them,
each in its own process, with every file they write in a temporary folder: never the user's
cache, never benchmarks/results."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def recorded() -> dict:
    """benchmarks/results as it stands: each file's size and modification time."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (BENCHMARKS / "results").iterdir()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_mode_runs(script, tmp_path, shakespeare):
    """Guards against a benchmark that fails on its own (smoke-sized) run, or writes over the recorded results."""
    before = recorded()
    results, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BLU_CACHE": str(tmp_path / "cache"),
           "BLU_SHAKESPEARE": str(shakespeare), "BLU_BENCH_RESULTS": str(results), "TMPDIR": str(tmp_path),
           "OMP_NUM_THREADS": "1"}  # a smoke run checks the code, not the speed: no threads fighting over shared cores
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{script} --smoke exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert recorded() == before, f"{script} --smoke changed benchmarks/results"
    if "save(" in (BENCHMARKS / script).read_text(encoding="utf-8"):  # it records its figures: in the folder it was given
        written = list(results.glob("*.json"))
        assert written and all("results" in json.loads(p.read_text()) for p in written), written
    assert not list(work.iterdir()), f"{script} --smoke left files in its working folder: {list(work.iterdir())}"


def write_run(folder: Path, weight: float, sample: str) -> Path:
    from safetensors.torch import save_file
    import torch

    folder.mkdir(parents=True)
    save_file({"w": torch.full((2, 2), weight)}, folder / "model.safetensors")
    (folder / "tokenizer.json").write_text('{"type": "char"}', encoding="utf-8")
    (folder / "samples.txt").write_text(sample, encoding="utf-8")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "train_loss": 3.0, "elapsed_s": weight}) + "\n")
    return folder


def test_compare_refs_names_what_differs(tmp_path, monkeypatch):
    """Guards against a side-by-side check that cannot fail: its smoke run compares a tree with itself."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_refs import same_run

    run = write_run(tmp_path / "a", 1.0, "ROMEO: hello")
    assert same_run(run, write_run(tmp_path / "same", 1.0, "ROMEO: hello")) == []
    problems = same_run(run, write_run(tmp_path / "b", 1.5, "ROMEO: hullo"))
    assert problems[0] == "model.safetensors: different weights"
    assert problems[1].startswith("samples.txt: from character 8:")
    assert len(problems) == 2  # the same losses: the time each step took is no behaviour
