"""Tokenizers side by side on tiny Shakespeare: compression (bytes per token of the
validation text), BPE training time, and the validation bits per byte that
`blu train --time T` reaches with each (the same text is scored whatever the tokenizer).

    python benchmarks/tokenizers_compare.py [--budget 150] [--rounds 2] [--bpe-sizes 512 1024 2048 4096] [--smoke]

The training runs alternate between tokenizers within each round, so that a
machine that gets busier slows them all.
"""

import argparse
import statistics
import tempfile
import time

from budget_loss import run_budget
from common import SMOKE_HELP, TINY_MODEL, save, small_corpus, smoke_cache, table

from blu.config import VAL_FRACTION
from blu.data.text import default_corpus_path, read_corpus, split_point
from blu.tokenizers import build_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=150, help="seconds of training per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bpe-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, extra = None, []  # None: blu's tiny Shakespeare
        if args.smoke:
            smoke_cache(tmp)
            data, extra, args.budget, args.rounds, args.bpe_sizes = str(small_corpus(tmp)), TINY_MODEL, 1, 1, [300]
        compare(args, data, extra)


def compare(args, data: str | None, extra: list[str]) -> None:
    text = read_corpus(data or default_corpus_path())
    cut = split_point(len(text), 1, "the corpus", VAL_FRACTION)  # where blu splits one text
    train_text, val_text = text[:cut], text[cut:]
    kinds = {"char": ["--tokenizer", "char"], "byte": ["--tokenizer", "byte"],
             **{f"bpe {n}": ["--tokenizer", "bpe", "--vocab-size", str(n)] for n in args.bpe_sizes}}
    rows = {}
    for name, flags in kinds.items():
        start = time.perf_counter()
        tokenizer = build_tokenizer(flags[1], train_text, int(flags[3]) if len(flags) > 2 else None)
        seconds = time.perf_counter() - start
        tokens = len(tokenizer.encode_array(val_text)[0])
        rows[name] = {"tokenizer": name, "vocabulary": tokenizer.vocab_size,
                      "bytes_per_token": len(val_text.encode("utf-8")) / tokens, "build_s": seconds, "val_bpb": []}
    for _ in range(args.rounds):
        for name, flags in kinds.items():
            result = run_budget(args.budget, None, flags + extra, data)
            rows[name]["val_bpb"].append(result["val_bpb"])
            rows[name].setdefault("steps", []).append(result["steps"])
    for row in rows.values():
        row["val_bpb_median"] = statistics.median(row["val_bpb"])
        row["val_bpb"] = ", ".join(f"{x:.3f}" for x in row["val_bpb"])
        row["steps"] = ", ".join(str(s) for s in row["steps"])
    print(f"tiny Shakespeare, cpu preset, {args.budget:g} s per run, {args.rounds} rounds")
    print(table(list(rows.values())))
    print("wrote", save("tokenizers_compare", {"budget_s": args.budget, "rows": list(rows.values())}, args.smoke))


if __name__ == "__main__":
    main()
