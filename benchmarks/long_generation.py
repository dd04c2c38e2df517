"""Does long generated text read as well at the end as at the start?

    python benchmarks/long_generation.py --run runs/NAME [--chars 6000] [--window 1500] [--seeds 0 1 2]

Generates `--chars` characters from the run (default sampling: temperature 0.8,
top-p 0.9) and prints the share of real words (words that occur in the run's
training text) in each `--window` characters, and the last minus the first. Also prints the
loss by position through the generation path (`blu eval --stream`).
"""

import argparse
import re

from common import save, table

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
    parser.add_argument("--run", required=True)
    parser.add_argument("--chars", type=int, default=6000)
    parser.add_argument("--window", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

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
                             "real_word_share": rows, "position_buckets": buckets})


if __name__ == "__main__":
    main()
