"""Training tokens/s of `blu train` on 1 and on 2 processes (torchrun, gloo, one thread each) on
this CPU, and what the communication of a step costs.

    python benchmarks/distributed_speed.py [--preset cpu] [--iters 60] [--rounds 2] [--smoke]

Each process keeps the preset's per-process batch, so 2 processes take twice the tokens per
step. Tokens/s is read from the run's metrics.jsonl between its first and last logged step
(evaluation only at the end, after the last one). The communication per step is timed on its
own in a 2-process gloo group: an all_reduce of every gradient (the model's parameters in
float32, what DDP reduces each step) and the one all_reduce of four numbers with which the
ranks agree on each step. The runs use the char tokenizer (66 tokens on tiny Shakespeare, as
when the figures were first recorded; given --data, blu would build a bpe). The 1- and
2-process runs alternate in rounds so that the noise of a shared machine hits both alike; the
median round is kept.
"""

import argparse
import json
import math
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

from common import SMOKE_HELP, TINY_MODEL, save, shakespeare, small_corpus, smoke_cache, table
from safetensors import safe_open
import torch
import torch.distributed as dist

from blu.config import PRESETS


def trained_shape(run: Path) -> tuple[int, int]:
    """(parameters, tokens per step and process) of a 1-process run: what DDP reduces each step, and the batch."""
    with safe_open(run / "model.safetensors", framework="pt") as f:  # a tied head is stored (and reduced) once
        parameters = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return parameters, last["tokens"] // last["step"]


def tokens_per_s(run: Path) -> float:
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "train_loss" in r]
    first, last = logged[0], logged[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def train(processes: int, preset: str, iters: int, folder: Path, data: Path, extra: list[str]) -> float:
    flags = ["train", "--data", str(data), "--tokenizer", "char", "--out", str(folder), "--force",
             "--preset", preset, "--iters", str(iters), "--eval-every", str(10 * iters), "--device", "cpu", *extra]
    if processes == 1:
        command = [sys.executable, "-m", "blu", *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "blu", *flags]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    return tokens_per_s(folder)


def time_communication(parameters: int, repeats: int) -> None:
    """In a torchrun worker: the median time of the gradient all_reduce and of the agreement."""
    dist.init_process_group("gloo")
    results = {}
    for name, tensor in (("gradients", torch.randn(parameters)), ("agreement", torch.zeros(4, dtype=torch.float64))):
        for _ in range(5):
            dist.all_reduce(tensor)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    if dist.get_rank() == 0:
        print(json.dumps(results))
    dist.destroy_process_group()


def communication(parameters: int, repeats: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, "--communication", str(parameters), "--repeats", str(repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50, help="timed all_reduces of each kind")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--communication", type=int, help=argparse.SUPPRESS)  # the worker of `communication`
    args = parser.parse_args()
    if args.communication:
        return time_communication(args.communication, args.repeats)

    rates = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        data, extra = shakespeare(), []
        if args.smoke:
            smoke_cache(tmp)
            data, extra, args.iters, args.rounds, args.repeats = small_corpus(tmp), TINY_MODEL, 20, 1, 5
        for _ in range(args.rounds):
            for processes in rates:
                rates[processes].append(train(processes, args.preset, args.iters, Path(tmp) / f"p{processes}", data, extra))
        parameters, batch = trained_shape(Path(tmp) / "p1")
    comm = communication(parameters, args.repeats)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    rows = [{"processes": 1, "tokens_per_step": float(batch), "tokens_per_s": one, "step_ms": 1000 * batch / one},
            {"processes": 2, "tokens_per_step": float(2 * batch), "tokens_per_s": two, "step_ms": 2000 * batch / two}]
    print(table(rows))
    print(f"speed-up with 2 processes: {two / one:.2f}x; per step, the all_reduce of {parameters:,} gradients takes "
          f"{1000 * comm['gradients']:.2f} ms and the agreement {1000 * comm['agreement']:.3f} ms")
    save("distributed_speed", {"preset": args.preset, "iters": args.iters, "rounds": rates, "table": rows,
                               "speedup": two / one, "parameters": parameters,
                               "gradient_all_reduce_ms": 1000 * comm["gradients"],
                               "agreement_all_reduce_ms": 1000 * comm["agreement"]}, args.smoke)


if __name__ == "__main__":
    main()
