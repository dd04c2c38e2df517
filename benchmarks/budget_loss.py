"""Validation loss reached by `blu train --time T` on tiny Shakespeare, with the
peak resident memory of the training process.

    python benchmarks/budget_loss.py [--budgets 60 150] [--preset cpu] [--smoke] [-- extra blu train flags]

Each budget is a separate `blu train` process (as a user would run it) in a
temporary run folder; the figure is the best val_loss in its metrics.jsonl.
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile

from common import SMOKE_HELP, TINY_MODEL, save, small_corpus, smoke_cache, table


def run_budget(seconds: float, preset: str | None, extra: list[str], data: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "blu", "train", "--time", str(seconds), "--out", str(Path(tmp) / "run"), *extra]
        command += ["--preset", preset] if preset else []
        command += ["--data", data] if data else []
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # wait4 gives this child's own peak memory
        stderr = process.stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"blu train failed:\n{stderr}")
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "val_loss" in r]
        last = rows[-1]
        bpb = [r["val_bpb"] for r in evals if "val_bpb" in r]  # blu before bits per byte has none
        return {"budget_s": seconds, "val_loss": min(r["val_loss"] for r in evals),
                **({"val_bpb": min(bpb)} if bpb else {"val_bpc": min(r["val_bpc"] for r in evals)}),
                "steps": last["step"], "tokens": last["tokens"], "train_tokens_per_s": last["tokens"] / last["elapsed_s"],
                "peak_rss_mb": usage.ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60, 150], help="seconds")
    parser.add_argument("--preset", help="blu preset (default: blu's choice for this machine)")
    parser.add_argument("--data", help="text file (default: tiny Shakespeare from the cache)")
    parser.add_argument("--name", default="budget_loss", help="name of the results file")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            smoke_cache(tmp)
            args.budgets, args.data, extra = [1], str(small_corpus(tmp)), [*TINY_MODEL, *extra]
        rows = [run_budget(b, args.preset, extra, args.data) for b in args.budgets]
    print(table(rows))
    print("wrote", save(args.name, {"preset": args.preset or "default", "extra_flags": extra, "rows": rows}, args.smoke))


if __name__ == "__main__":
    main()
