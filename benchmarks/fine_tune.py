"""Fine-tuning with `blu train --init-from`: AdamW against Muon, at several learning rates, on
parents pretrained with each, fine-tuned on text unlike what they learned.

    python benchmarks/fine_tune.py [--parent-iters 300] [--iters 150] [--context 64] [--batch-size 16] [--smoke]

The parents are `blu train` runs on tiny Shakespeare (the cpu preset's model at a context of 64
and batches of 16, so that the grid fits a busy 2-core machine; a BPE of 1,024 tokens), one
trained with AdamW (as the checkpoints people publish are) and one with Muon (blu's default). The
new text is the Python documentation that ships with every Python (pydoc_data.topics, 465K
characters of English about Python): other words, other style. Each fine-tune is a `blu train
--init-from` process as a user runs it, with the fine-tuning defaults but for the optimizer and
learning rate; the figures are its step-0 validation loss (the parent's), its best, and its loss
afterwards on the parent's own validation text (`blu eval --data PARENT`: what was forgotten). A
run from scratch on the new text with the same budget shows what starting from a parent is worth.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile

from common import SMOKE_HELP, TINY_MODEL, save, shakespeare, small_corpus, smoke_cache, table

GRID = {"adamw": [1e-4, 3e-4, 1e-3], "muon": [3e-4, 1e-3, 3e-3]}
SMOKE_GRID = {"adamw": [3e-4], "muon": [1e-3]}


def blu(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "blu", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"blu {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def new_text(folder: Path, chars: int | None) -> Path:
    """The Python documentation's topics, one document, as a text file."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    path = folder / "python-docs.txt"
    path.write_text(text[:chars] if chars else text, encoding="utf-8")
    return path


def fine_tune(parent: Path, data: Path, out: Path, optimizer: str, lr: float, iters: int, extra: list[str]) -> dict:
    blu("train", "--init-from", parent, "--data", data, "--out", out, "--optimizer", optimizer, "--lr", lr,
        "--iters", iters, *extra)
    rows = evals(out)
    old = json.loads(blu("eval", "--run", out, "--data", parent, "--json"))
    assert rows[0]["step"] == 0
    return {"step0_val_loss": rows[0]["val_loss"], "best_val_loss": min(r["val_loss"] for r in rows),
            "best_val_bpb": min(r["val_bpb"] for r in rows), "parent_text_val_loss": old["val_loss"],
            "train_s": rows[-1]["elapsed_s"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent-iters", type=int, default=300, help="steps of each parent's training")
    parser.add_argument("--parent-adamw-lr", type=float, default=1e-3, help="peak lr of the AdamW parent")
    parser.add_argument("--iters", type=int, default=150, help="steps of each fine-tune")
    parser.add_argument("--context", type=int, default=64, help="the parents' context (the fine-tunes keep it)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step, parents and fine-tunes")
    parser.add_argument("--adamw-lr", type=float, nargs="*", default=GRID["adamw"], help="AdamW's learning rates")
    parser.add_argument("--muon-lr", type=float, nargs="*", default=GRID["muon"], help="Muon's learning rates")
    parser.add_argument("--name", default="fine_tune", help="name of the results file")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    grid, chars = {"adamw": args.adamw_lr, "muon": args.muon_lr}, None
    model = ["--tokenizer", "bpe", "--vocab-size", "1024", "--context", str(args.context)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = shakespeare()
        if args.smoke:
            smoke_cache(tmp)
            corpus, grid, chars = small_corpus(tmp), SMOKE_GRID, 20_000
            args.parent_iters, args.iters, model = 10, 6, ["--tokenizer", "bpe", "--vocab-size", "300", *TINY_MODEL[:-2]]
            args.batch_size = 4
        data = new_text(tmp, chars)
        extra = ["--eval-every", str(max(1, args.iters // 3)), "--batch-size", str(args.batch_size)]
        parents = {}
        for optimizer in ("adamw",) if args.smoke else ("adamw", "muon"):  # a smoke run: one parent
            parents[optimizer] = tmp / f"parent-{optimizer}"
            lr = ["--lr", args.parent_adamw_lr] if optimizer == "adamw" else []  # Muon: the preset's
            blu("train", "--data", corpus, "--preset", "cpu", *model, "--optimizer", optimizer, *lr,
                "--batch-size", args.batch_size, "--iters", args.parent_iters, "--out", parents[optimizer])
        rows = []
        parent_losses = {name: min(r["val_loss"] for r in evals(folder)) for name, folder in parents.items()}
        for parent_optimizer, parent in parents.items():
            for optimizer, rates in grid.items():
                for lr in rates:
                    out = tmp / f"ft-{parent_optimizer}-{optimizer}-{lr:g}"
                    result = fine_tune(parent, data, out, optimizer, lr, args.iters, extra)
                    rows.append({"parent": parent_optimizer, "optimizer": optimizer, "lr": lr, **result})
                    print(table(rows[-1:]), flush=True)
        # From scratch on the new text, the same budget, the parents' tokenizer: what a parent is worth.
        scratch = tmp / "scratch"
        blu("train", "--data", data, "--preset", "cpu", *(TINY_MODEL[:-4] if args.smoke else []), "--context",
            str(args.context if not args.smoke else 32), "--tokenizer-from", parents["adamw"], "--iters", args.iters, *extra,
            "--out", scratch)
        rows.append({"parent": "none (from scratch, the cpu preset's Muon)", "optimizer": "muon", "lr": 3e-3,
                     "step0_val_loss": float("nan"), "best_val_loss": min(r["val_loss"] for r in evals(scratch)),
                     "best_val_bpb": min(r["val_bpb"] for r in evals(scratch)), "parent_text_val_loss": float("nan"),
                     "train_s": evals(scratch)[-1]["elapsed_s"]})
    print(table(rows))
    print("wrote", save(args.name, {"parent_iters": args.parent_iters, "iters": args.iters, "context": args.context,
                                      "batch_size": args.batch_size, "parent_val_loss": parent_losses, "rows": rows},
                        args.smoke))


if __name__ == "__main__":
    main()
