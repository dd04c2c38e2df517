"""Where the time of single-stream generation goes, for a `seed` preset model.

    python benchmarks/profile_generate.py [--tokens 300]

Prints the torch profiler's top operators for `--tokens` sampled tokens, and the
memory-bandwidth floor: the time of one matrix-vector pass over as many fp32
weights as the model has, which every generated token must read.
"""

import argparse
from dataclasses import replace
import time

from common import SMOKE_HELP, save
import torch
from torch.profiler import ProfilerActivity, profile

from blu.config import PRESETS, SamplingOptions
from blu.generate import stream_tokens
from blu.model import Transformer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.tokens = 20
    torch.manual_seed(0)
    model = Transformer(replace(PRESETS["seed"].model, vocab_size=66)).eval()

    def generate():
        return list(stream_tokens(model, [1, 2, 3], args.tokens, SamplingOptions(0.8, 0, 0.9), torch.Generator().manual_seed(0)))

    def per_token_us():
        start = time.perf_counter()
        generate()
        return (time.perf_counter() - start) / args.tokens * 1e6

    per_token_us = min(per_token_us() for _ in range(6))  # the least disturbed run on a shared machine
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    weights = torch.randn(model.num_parameters() // model.config.dim, model.config.dim)
    x = torch.randn(model.config.dim, 1)
    for _ in range(50):
        weights @ x
    start = time.perf_counter()
    for _ in range(500):
        weights @ x
    floor_us = (time.perf_counter() - start) / 500 * 1e6
    print(f"{per_token_us:.0f} us per token without the profiler; weight-reading floor {floor_us:.0f} us per token")
    save("profile_generate", {"per_token_us": per_token_us, "weight_read_floor_us": floor_us,
                              "top_ops": [{"op": e.key, "calls_per_token": e.count / args.tokens,
                                           "self_us_per_token": e.self_cpu_time_total / args.tokens} for e in ops]},
         smoke=args.smoke)


if __name__ == "__main__":
    main()
