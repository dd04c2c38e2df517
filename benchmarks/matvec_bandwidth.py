"""How fast can torch read a 135M model's weights at batch 1? The memory bandwidth that
batch-1 generation is bound by, by way of reading, on the machine it runs on.

    python benchmarks/matvec_bandwidth.py [--rounds 7]

SmolLM2-135M's matrices as blu's decoder holds them ((in, out), contiguous: per layer q|k|v
576 x 960, o 576 x 576, gate|up 576 x 3,072, down 1,536 x 576; the head 576 x 49,152; 538 MB
in all), random. Rows, each the best of `--rounds` passes over the weights, in GB/s:

- a plain read (`sum` of one tensor as large as the weights): what the memory gives a core;
- `torch.mm` of one row by each matrix (what the decoder runs), with 1 and 2 torch threads,
  by shape and over all of them;
- the same products with each matrix split in two column halves, one half computed by a
  helper Python thread while the calling thread computes the other (torch releases the
  GIL in its products);
- blu's decoder's way since it measured fastest (`fold.column_blocks`, `fold.product`):
  large matrices in contiguous column blocks, one batched product each, which torch
  shares over its threads, by shape and over all of them.
"""

import argparse
import queue
import threading
import time

from common import SMOKE_HELP, save, table
import torch

from blu.fold import column_blocks, product

LAYER = [("q|k|v", 576, 960), ("o", 576, 576), ("gate|up", 576, 3072), ("down", 1536, 576)]
HEAD = ("head", 576, 49152)


def best_seconds(run, rounds: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


class HalfHelper:
    """A thread that computes x @ w for the matrices it is handed, one at a time."""

    def __init__(self):
        self.todo, self.done = queue.SimpleQueue(), queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            x, w = self.todo.get()
            self.done.put(torch.mm(x, w))

    def product(self, x, left, right):
        self.todo.put((x, left))
        ours = torch.mm(x, right)
        return torch.cat((self.done.get(), ours), dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.layers = 1, 1
    torch.manual_seed(0)
    shapes = LAYER * args.layers + [HEAD]
    weights = [(name, torch.randn(rows, cols)) for name, rows, cols in shapes]
    inputs = {rows: torch.randn(1, rows) for _, rows, _ in shapes}
    total = sum(w.numel() * 4 for _, w in weights)
    results = []

    def record(what, threads, seconds, nbytes):
        results.append({"read": what, "torch threads": threads, "ms": f"{seconds * 1e3:.1f}",
                        "GB/s": f"{nbytes / seconds / 1e9:.1f}"})

    def products(matrices):
        return lambda: [torch.mm(inputs[w.shape[0]], w) for w in matrices]

    def blocked_products(matrices):  # laid out at the current thread count, as the decoder folds them
        blocked = [(inputs[w.shape[0]], column_blocks(w)) for w in matrices]
        return lambda: [product(x, w) for x, w in blocked]

    plain = torch.randn(total // 4)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        record("plain read (sum)", threads, best_seconds(plain.sum, args.rounds), total)
    del plain
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name in [n for n, _, _ in LAYER] + [HEAD[0]]:
            mine = [w for n, w in weights if n == name]
            nbytes = sum(w.numel() * 4 for w in mine)
            record(f"mm, {name} {tuple(mine[0].shape)}", threads, best_seconds(products(mine), args.rounds), nbytes)
            record(f"column blocks (blu), {name} {tuple(column_blocks(mine[0]).shape)}", threads,
                   best_seconds(blocked_products(mine), args.rounds), nbytes)
        record("mm, every matrix", threads, best_seconds(products([w for _, w in weights]), args.rounds), total)
        record("column blocks (blu), every matrix", threads,
               best_seconds(blocked_products([w for _, w in weights]), args.rounds), total)
    torch.set_num_threads(1)
    halves = [(w[:, : w.shape[1] // 2].contiguous(), w[:, w.shape[1] // 2 :].contiguous()) for _, w in weights]
    helper = HalfHelper()
    record("mm, every matrix in halves over 2 Python threads", 1,
           best_seconds(lambda: [helper.product(inputs[a.shape[0]], a, b) for a, b in halves], args.rounds), total)
    print(table(results))
    print(f"\n{total / 1e6:,.0f} MB of weights; a token of batch-1 generation reads them once.")
    print(f"wrote {save('matvec_bandwidth', results, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
