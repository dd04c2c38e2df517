"""Single-stream generation tokens/s of blu against transformers' generate() on
the same weights, in one process.

    python benchmarks/generate_speed.py [--run runs/NAME] [--tokens 500] [--rounds 3]

Without --run, a `seed` preset model with random weights is used (speed does not
depend on what the weights learned). Both decode greedily from the same prompt;
blu is also timed with its default sampling (temperature 0.8, top-p 0.9).
"""

import argparse
from dataclasses import replace
import statistics
import time

from common import SMOKE_HELP, save, table
import torch

import blu
from blu.config import PRESETS, SamplingOptions
from blu.export import to_transformers
from blu.generate import generation_loop, sampler, stream_tokens
from blu.model import Transformer


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: a random seed-preset model)")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per timed generation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 64], help="batched sampling throughput")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.rounds, args.batch_sizes = 20, 1, [4]

    torch.manual_seed(0)
    model = blu.load(args.run).model if args.run else Transformer(replace(PRESETS["seed"].model, vocab_size=66)).eval()
    hf = to_transformers(model)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    n = args.tokens

    def blu_run(options):
        return lambda: sum(1 for _ in stream_tokens(model, prompt, n, options, torch.Generator().manual_seed(0)))

    def hf_run():
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert out.shape[1] == len(prompt) + n

    def batch_run(batch_size):
        prompts = torch.tensor([prompt] * batch_size)
        choose = sampler(SamplingOptions(0.8, 0, 0.9), torch.Generator().manual_seed(0))
        return lambda: sum(1 for _ in generation_loop(model, prompts, n, choose))

    contenders = {"blu greedy": blu_run(SamplingOptions(0.0)),
                  "blu sampling (T 0.8, top-p 0.9)": blu_run(SamplingOptions(0.8, 0, 0.9)),
                  "transformers generate() greedy": hf_run}
    batches = {f"blu sampling, batch {b} (--num-samples {b})": (b, batch_run(b)) for b in args.batch_sizes}
    for fn in contenders.values():
        fn()  # warm-up
    seconds = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            seconds[name].append(timed(fn))
    for name, (batch_size, fn) in batches.items():
        fn()
        seconds[name] = [timed(fn) / batch_size for _ in range(args.rounds)]
    # The median is the typical speed; on a shared machine the best round is the least disturbed one.
    rows = [{"implementation": name, "tokens_per_s": n / statistics.median(s), "best_round": n / min(s)}
            for name, s in seconds.items()]
    blu_greedy, hf_greedy = (next(r for r in rows if r["implementation"] == name)
                             for name in ("blu greedy", "transformers generate() greedy"))
    ratio = blu_greedy["tokens_per_s"] / hf_greedy["tokens_per_s"]
    best_ratio = blu_greedy["best_round"] / hf_greedy["best_round"]
    print(f"{model.num_parameters():,} parameters, context {model.config.context}, {n} new tokens, batch 1")
    print(table(rows))
    print(f"blu greedy / transformers greedy: {ratio:.1f}x (medians), {best_ratio:.1f}x (best rounds)")
    record = {"rows": rows, "ratio": ratio, "best_round_ratio": best_ratio, "new_tokens": n}
    print("wrote", save("generate_speed", record, smoke=args.smoke))


if __name__ == "__main__":
    main()
