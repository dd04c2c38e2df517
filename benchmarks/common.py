"""What every benchmark records beside its figures: the machine, the versions, the date."""

import datetime
import json
import os
from pathlib import Path
import platform
import sys

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
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


def save(name: str, results) -> Path:
    """Write results with the command line, machine and date to benchmarks/results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
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
