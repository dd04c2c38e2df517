"""blu's speed against another checkout of blu (say, main before a change), side by
side: batch-1 greedy generation tokens/s and training tokens/s, alternating rounds.

    git worktree add ../blu-base <commit>
    python benchmarks/compare_refs.py --other ../blu-base [--rounds 5]

Each measurement runs in a fresh process with one checkout's `src/` first on
PYTHONPATH, so the two never share a process; they alternate in every round,
so a machine that gets busier slows both. Only the API both share is used:
`blu.generate.stream_tokens` for generation, `blu train --iters` for training
(tokens/s between its 10th and last logged step, from metrics.jsonl).
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile

from common import save, table

HERE = Path(__file__).resolve().parents[1]

GENERATE = """
import time, torch
from dataclasses import replace
from blu.config import PRESETS, SamplingOptions
from blu.generate import stream_tokens
from blu.model import Transformer
torch.manual_seed(0)
model = Transformer(replace(PRESETS["seed"].model, vocab_size=66)).eval()
run = lambda: sum(1 for _ in stream_tokens(model, [1, 2, 3, 4, 5, 6, 7, 8], {n}, SamplingOptions(0.0)))
run()
start = time.perf_counter(); run(); print({n} / (time.perf_counter() - start))
"""


def generation(src: Path, tokens: int) -> float:
    out = subprocess.run([sys.executable, "-c", GENERATE.format(n=tokens)], env={**os.environ, "PYTHONPATH": str(src)},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def training(src: Path, corpus: Path, iters: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "blu", "train", "--data", str(corpus), "--out", f"{tmp}/run",
                        "--iters", str(iters), "--eval-every", str(10 * iters)],
                       env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, check=True)
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train_loss" in r]
    first, last = logged[0], logged[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="the other checkout (a folder with src/blu)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens per measurement")
    parser.add_argument("--iters", type=int, default=80, help="training steps per measurement (cpu preset)")
    parser.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "tinyshakespeare.txt"))
    args = parser.parse_args()
    checkouts = {"this checkout": HERE / "src", "other": Path(args.other).resolve() / "src"}
    results = {(name, kind): [] for name in checkouts for kind in ("generate", "train")}
    for _ in range(args.rounds):
        for name, src in checkouts.items():
            results[name, "generate"].append(generation(src, args.tokens))
            results[name, "train"].append(training(src, Path(args.data), args.iters))
    rows = [{"checkout": name, "measure": kind, "median_tokens_per_s": statistics.median(v),
             "rounds": ", ".join(f"{x:,.0f}" for x in v)} for (name, kind), v in results.items()]
    ratios = {kind: statistics.median(results["this checkout", kind]) / statistics.median(results["other", kind])
              for kind in ("generate", "train")}
    print(table(rows))
    print("this / other: " + ", ".join(f"{kind} {r:.3f}x" for kind, r in ratios.items()))
    print("wrote", save("compare_refs", {"other": str(Path(args.other).resolve()), "rows": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
