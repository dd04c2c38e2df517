"""Does long generated text read as well at the end as at the start?

    python benchmarks/long_generation.py --run runs/NAME [--chars 6000] [--window 1500] [--seeds 0 1 2]

Generates `--chars` characters from the run (default sampling: temperature 0.8,
top-p 0.9) and prints the share of real words (words that occur in the run's
training text) in each `--window` characters, and the last minus the first. Also prints the
loss by position through the generation path (`blu eval --stream`).
"""

import argparse
import re
import subprocess
import sys
import tempfile

from common import SMOKE_HELP, TINY_MODEL, save, small_corpus, smoke_cache, table

import blu
from blu.config import VAL_FRACTION
from blu.data.text import load_text, split_point
from blu.evaluate import stream_eval

WORD = re.compile(r"[A-Za-z']+")


def real_word_share(text: str, vocabulary: set) -> float:
    words = [w.strip("'").lower() for w in WORD.findall(text)]
    words = [w for w in words if w]
    return sum(w in vocabulary for w in words) / max(1, len(words))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (required unless --smoke)")
    parser.add_argument("--chars", type=int, default=6000)
    parser.add_argument("--window", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:  # a run trained 20 steps in a temporary folder, 300 characters in windows of 100
        with tempfile.TemporaryDirectory() as tmp:
            smoke_cache(tmp)
            args.run, args.chars, args.window, args.seeds = f"{tmp}/run", 300, 100, [0]
            subprocess.run([sys.executable, "-m", "blu", "train", "--data", str(small_corpus(tmp)), "--out", args.run,
                            "--tokenizer", "char", "--iters", "20", *TINY_MODEL], check=True, capture_output=True)
            measure(args)
    elif not args.run:
        parser.error("--run is required (or --smoke)")
    else:
        measure(args)


def measure(args) -> None:
    run = blu.load(args.run)
    text, _ = load_text(run.meta["data"]["path"], run.meta["data"]["sha256"])
    tokens = run.tokenizer.encode_array(text)[0]
    cut = split_point(len(tokens), run.model.config.context, "the corpus", VAL_FRACTION)
    train_tokens, val_tokens = tokens[:cut], tokens[cut:]
    train_text = text[: len(train_tokens)]
    vocabulary = {w.strip("'").lower() for w in WORD.findall(train_text)}
    rows = []
    for seed in args.seeds:
        generated = "".join(run.generate("ROMEO:", max_new_tokens=args.chars, seed=seed))
        shares = [real_word_share(generated[i : i + args.window], vocabulary) for i in range(0, args.chars, args.window)]
        rows.append({"seed": seed, **{f"chars_{i * args.window}+": share for i, share in enumerate(shares)},
                     "last_minus_first": shares[-1] - shares[0]})
    rows.append({"seed": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"}})
    print(table(rows))
    buckets = stream_eval(run.model, val_tokens)
    print(table(buckets))
    save("long_generation", {"run_config": run.meta["model"], "chars": args.chars, "window": args.window,
                             "real_word_share": rows, "position_buckets": buckets}, smoke=args.smoke)


if __name__ == "__main__":
    main()
