"""What every benchmark records beside its figures (the machine, the versions, the date), where
it writes them, and what its --smoke mode shares with the others.

Every script has a --smoke mode: a tiny model and a few steps or tokens through the same code,
in seconds, that tests/test_benchmarks.py runs so that no benchmark rots unseen. A smoke run's
figures mean nothing: they go to a temporary folder, never over the recorded ones."""

import datetime
import json
import os
from pathlib import Path
import platform
import shutil
import sys
import tempfile

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_HELP = "a tiny model and a few steps or tokens through the same code, in seconds (figures not kept)"
# `blu train` flags for a model that trains in a second, for smoke runs (log_every is 10 steps)
TINY_MODEL = ["--dim", "32", "--n-layer", "1", "--n-head", "2", "--n-kv-head", "2", "--hidden-dim", "64",
              "--context", "32", "--batch-size", "4"]


def shakespeare() -> Path:
    """Tiny Shakespeare: $BLU_SHAKESPEARE, or the copy in ../shared/data beside the repository."""
    return Path(os.environ.get("BLU_SHAKESPEARE") or Path(__file__).resolve().parents[2] / "shared" / "data" /
                "tinyshakespeare.txt")


def small_corpus(folder, chars: int = 60_000) -> Path:
    """The first `chars` characters of tiny Shakespeare as a file in `folder`, for smoke runs."""
    path = Path(folder) / "small.txt"
    path.write_text(shakespeare().read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


def smoke_cache(folder) -> Path:
    """A fresh $BLU_CACHE in `folder` holding tiny Shakespeare, for this process and the blu
    processes it starts: a smoke run neither downloads nor fills the user's cache."""
    cache = Path(folder) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(shakespeare(), cache / "tinyshakespeare.txt")
    os.environ["BLU_CACHE"] = str(cache)
    return cache


def results_folder(smoke: bool = False) -> Path:
    """Where `save` writes: $BLU_BENCH_RESULTS when set (the tests set it), else benchmarks/results,
    or for a smoke run a folder in the temporary directory."""
    if os.environ.get("BLU_BENCH_RESULTS"):
        return Path(os.environ["BLU_BENCH_RESULTS"])
    return Path(tempfile.gettempdir()) / "blu-benchmarks-smoke" if smoke else RESULTS


def machine() -> dict:
    import torch  # here, so that scripts that never touch torch start without it

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def save(name: str, results, smoke: bool = False) -> Path:
    """Write results with the command line, machine and date to NAME.json in `results_folder(smoke)`."""
    folder = results_folder(smoke)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    record = {"command": " ".join(["python"] + sys.argv), "date": datetime.date.today().isoformat(),
              "machine": machine(), "results": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _cell(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"  # losses to 4 places, rates and sizes whole


def table(rows: list[dict]) -> str:
    """A Markdown table of dicts that share their keys."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
