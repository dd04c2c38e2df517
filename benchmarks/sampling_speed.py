"""What sampling one token costs at a real vocabulary: `blu.sampling.sample` (temperature 0.8,
top-p 0.9, blu serve's and blu generate's defaults) on rows of 49,152 logits (SmolLM2's
vocabulary) of Gaussian logits at five spreads, from a top-p set of a few tokens to nearly all
(flat logits, as a random model gives; each row's set size is printed), per row at batch 1 and
16; beside another tree's sampling.

    python benchmarks/sampling_speed.py [--before /path/to/other/src] [--rounds 5]

Each tree is timed in its own process (PYTHONPATH set to its src), the two alternating in
rounds; a figure is the median over rounds of the mean of 20 calls.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import time

from common import SMOKE_HELP, save, table

SPREADS = [8.0, 4.0, 3.0, 1.0, 0.01]  # standard deviations of the logits after the temperature


def time_here(vocab: int, calls: int) -> dict:
    """ms per row of this process's blu.sampling for each spread and batch."""
    import torch

    from blu.config import SamplingOptions
    from blu.sampling import sample

    options = SamplingOptions(temperature=0.8, top_p=0.9)
    generator = torch.Generator().manual_seed(0)
    out = {}
    for batch in (1, 16):
        for spread in SPREADS:
            logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(1)) * spread * 0.8
            ordered = torch.softmax(logits[0] / 0.8, dim=-1).sort(descending=True).values
            name = f"{int(((ordered.cumsum(0) - ordered) < 0.9).sum()):,}"
            sample(logits, options, generator)
            start = time.perf_counter()
            for _ in range(calls):
                sample(logits, options, generator)
            out[f"{batch} {name}"] = (time.perf_counter() - start) / calls / batch * 1e3
    return out


def time_tree(src: Path, vocab: int, calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--child", "--vocab", str(vocab), "--calls", str(calls)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another tree's src folder, timed beside this one")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_here(args.vocab, args.calls)))
        return
    if args.smoke:
        args.rounds, args.vocab, args.calls = 1, 2_000, 2
    trees = {"this tree": Path(__file__).resolve().parents[1] / "src"}
    if args.before:
        trees["before"] = args.before.resolve()
    rounds = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            rounds[name].append(time_tree(src, args.vocab, args.calls))
    rows = []
    for key in rounds["this tree"][0]:
        batch, spread = key.split(" ", 1)
        row = {"batch": batch, "tokens in the top-p set": spread}
        for name in trees:
            row[f"{name} (ms a row)"] = f"{statistics.median(r[key] for r in rounds[name]):.2f}"
        if args.before:
            row["before / this"] = f"{float(row['before (ms a row)']) / float(row['this tree (ms a row)']):.2f}x"
        rows.append(row)
    print(table(rows))
    print(f"wrote {save('sampling_speed', {'rows': rows, 'rounds': rounds, 'vocab': args.vocab}, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
