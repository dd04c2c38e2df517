"""Do the decoder's two special paths still pay? Batch-1 greedy tokens/s of a `seed`
preset model with and without each, alternating in one process.

    python benchmarks/decode_paths.py [--tokens 500] [--rounds 7]

The paths: the first layer's q|k|v looked up by token id (`first_layer_table`), and
the single-row RMSNorm (`x @ x.T` by addmm instead of a batched product).
"""

import argparse
from dataclasses import replace
import statistics
import time

from common import SMOKE_HELP, save, table
import torch

from blu import decode
from blu.config import PRESETS
from blu.model import Transformer

single_row_norm = decode.rms_normalize


def batched_norm_only(x, eps):
    """rms_normalize without its single-row branch."""
    mean_square = torch.baddbmm(eps, x[:, None], x[:, :, None], alpha=1 / x.shape[-1])
    return x * mean_square.view(-1, 1).rsqrt_()


@torch.inference_mode()
def greedy_seconds(model, first_layer_table: bool, norm, tokens: int) -> float:
    decode.rms_normalize = norm  # the decoder looks the function up at each call
    try:
        batch = decode.DecodeBatch(decode.Decoder(model, first_layer_table=first_layer_table), capacity=1)
        start = time.perf_counter()
        logits = batch.add(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
        for _ in range(tokens):
            logits = batch.step(logits.argmax(dim=-1))
        return time.perf_counter() - start
    finally:
        decode.rms_normalize = single_row_norm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.rounds = 20, 1
    torch.manual_seed(0)
    model = Transformer(replace(PRESETS["seed"].model, vocab_size=66)).eval()
    variants = {"both (default)": (True, single_row_norm), "no first-layer table": (False, single_row_norm),
                "no single-row norm": (True, batched_norm_only), "neither": (False, batched_norm_only)}
    for table_on, norm in variants.values():
        greedy_seconds(model, table_on, norm, args.tokens)  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (table_on, norm) in variants.items():
            seconds[name].append(greedy_seconds(model, table_on, norm, args.tokens))
    base = statistics.median(seconds["both (default)"])
    rows = [{"variant": name, "tokens_per_s": args.tokens / statistics.median(s), "best_round": args.tokens / min(s),
             "time_vs_default": statistics.median(s) / base} for name, s in seconds.items()]
    print(f"seed preset, vocabulary 66, batch 1, greedy, {args.tokens} tokens, median of {args.rounds} rounds")
    print(table(rows))
    print("wrote", save("decode_paths", {"rows": rows, "tokens": args.tokens}, smoke=args.smoke))


if __name__ == "__main__":
    main()
