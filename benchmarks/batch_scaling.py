"""How far batching can carry generation on this CPU: the decoder's step for 1, 4, 16 and 64 rows,
beside its matrix products alone at the same rows, and the cost of a refill (past the context a
row re-encodes its last context/2 tokens).

    python benchmarks/batch_scaling.py [--preset seed] [--threads 1] [--rounds 3]

The `seed` preset's model (random weights; a char vocabulary of 66) decoded by `decode.Decoder`,
every row at one position, no sampling: what `blu serve`'s engine and `blu generate` run for each
token, less their bookkeeping. "bound" is the most B rows could give over one row if nothing but
B rows' products were left of a step: B x (a one-row step) / (B rows' products). Where it is
under a target ratio, no server can reach that target on this model and machine.
"""

import argparse
import dataclasses
import statistics
import time

from common import SMOKE_HELP, save, table
import torch

from blu.config import PRESETS
from blu.decode import Decoder, KVCache
from blu.fold import product
from blu.model import Transformer

STEPS = 40


def step_seconds(decoder, config, rows: int) -> float:
    """Seconds of one step of `rows` rows (the mean of STEPS steps from position 8)."""
    cache = KVCache(config, rows, "cpu", torch.float32)
    decoder.prefill(torch.zeros(rows, 8, dtype=torch.long), cache)
    tokens = torch.zeros(rows, dtype=torch.long)
    steps = min(STEPS, config.context - 9)  # every step within the context: no refill in it
    start = time.perf_counter()
    for _ in range(steps):
        decoder.step(tokens, cache)
    return (time.perf_counter() - start) / steps


def products_seconds(decoder, rows: int) -> float:
    """Seconds of one step's matrix products alone, for `rows` rows, as the decoder lays them out."""
    w = decoder.weights
    matrices = [m for layer in w.layers for m in layer] + [w.head]
    inputs = {m.shape[-2]: torch.randn(rows, m.shape[-2]) for m in matrices}
    start = time.perf_counter()
    for _ in range(STEPS):
        for m in matrices:
            product(inputs[m.shape[-2]], m)
    return (time.perf_counter() - start) / STEPS


def refill_seconds(decoder, config) -> float:
    """Seconds of one row's refill: a prefill of its last context/2 - 1 tokens."""
    cache = KVCache(config, 1, "cpu", torch.float32)
    tokens = torch.zeros(1, config.context // 2 - 1, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(10):
        decoder.prefill(tokens, cache)
    return (time.perf_counter() - start) / 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS[args.preset].model, vocab_size=66)
    batches = (1, 4, 16, 64)
    if args.smoke:
        config = dataclasses.replace(config, dim=32, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=64, context=32)
        args.rounds, batches = 1, (1, 4)
    decoder = Decoder(Transformer(config).eval())
    flops = 2 * sum(m.numel() for layer in decoder.weights.layers for m in layer) + 2 * decoder.weights.head.numel()
    measured = {rows: {"step": [], "products": []} for rows in batches}
    refills = []
    with torch.no_grad():
        for _ in range(args.rounds):  # every batch size in each round, so the machine's swings hit them alike
            for rows in batches:
                measured[rows]["step"].append(step_seconds(decoder, config, rows))
                measured[rows]["products"].append(products_seconds(decoder, rows))
            refills.append(refill_seconds(decoder, config))
    one = statistics.median(measured[1]["step"])
    refill = statistics.median(refills)
    results = []
    for rows in batches:
        step, products = (statistics.median(measured[rows][k]) for k in ("step", "products"))
        results.append({"rows": rows, "step us": f"{step * 1e6:,.0f}", "tokens/s": f"{rows / step:,.0f}",
                        "over one row": f"{one / step * rows:.2f}", "products us": f"{products * 1e6:,.0f}",
                        "products GFLOP/s": f"{rows * flops / products / 1e9:.1f}",
                        "bound over one row": f"{rows * one / products:.1f}",
                        "refills us a step, rows staggered": f"{rows * refill / (config.context // 2) * 1e6:,.0f}"})
    print(table(results))
    print(f"\nA one-row refill of {config.context // 2 - 1} tokens: {refill * 1e6:,.0f} us; each row refills every "
          f"{config.context // 2} steps (the last column spreads them over the steps).")
    print(f"wrote {save('batch_scaling', {'results': results, 'refill_us': refill * 1e6, 'args': vars(args)}, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
