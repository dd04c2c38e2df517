"""Learning to chat on this CPU: held-out exact match against training time for the tasks of
tests/test_chat_task.py, from scratch and fine-tuned from a pretrained run, and what a step on
conversations costs against a step on plain text.

    python benchmarks/chat_task.py [--steps 150 300 600 1200] [--fact-steps 25 50 100 200] [--smoke]

Exact match: each budget is its own `blu train` process, as a user runs it (a shorter run has
its own schedule, not a longer run's early weights), scored on conversations it never saw by the
greedy reply through the run's template (tests/chat_support.py's exact_match). Two tasks:
reversing a word of 3 or 4 random letters (a char model from scratch, and one pretrained on tiny
Shakespeare first), and a fact table asked in a phrasing held out for each fact (bpe, from
scratch and from a pretrained run; chance 1 in 6). The training time is the run's own clock
(metrics.jsonl's elapsed_s: its steps and evaluations, not the start-up).

Step cost: the same model and optimizer step (forward, loss, backward, AdamW) timed in this
process on windows of plain text, on conversation rows as blu batches them (one per row, padded
to the longest of the batch, the loss on the assistant tokens), on the same rows padded to the
whole context, and on rows packed with whole conversations under a block-diagonal causal mask
(what packing would need; its positions are not restarted per conversation, which changes the
loss but not the work). Packing is not in blu; this is the measurement that decides it.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from common import SMOKE_HELP, save, shakespeare, small_corpus, smoke_cache, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chat_support import exact_match, fact_chats, reversal_chats, write_jsonl  # noqa: E402

SMALL = ["--dim", "64", "--n-layer", "2", "--n-head", "4", "--n-kv-head", "4", "--hidden-dim", "192"]


def blu(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "blu", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"blu {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")


def train_s(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]


def learning_curves(tmp: Path, args) -> list[dict]:
    """Exact match of each (task, start, budget), with the parents' own training time."""
    train, val = reversal_chats(3000, args.held_out, seed=5)
    reversal = (write_jsonl(tmp / "rev-train.jsonl", train), write_jsonl(tmp / "rev-val.jsonl", val), val)
    facts_train, facts_val = fact_chats()
    facts = (write_jsonl(tmp / "facts-train.jsonl", facts_train), write_jsonl(tmp / "facts-val.jsonl", facts_val), facts_val)
    parents = {"char": ["--tokenizer", "char", *SMALL, "--context", "48", "--batch-size", "32"],
               "bpe": ["--tokenizer", "bpe", "--vocab-size", "512", *SMALL, "--context", "64", "--batch-size", "16"]}
    for kind, flags in parents.items():
        blu("train", "--data", args.corpus, *flags, "--iters", args.parent_steps, "--out", tmp / f"parent-{kind}")
    rows = []
    tasks = [("reversal", "char", reversal, args.steps, ["--context", "48", "--batch-size", "32"]),
             ("fact table", "bpe", facts, args.fact_steps, ["--context", "64", "--batch-size", "16"])]
    for task, kind, (train_file, val_file, val_chats), budgets, shape in tasks:
        for start in ("scratch", "pretrained"):
            for steps in budgets:
                out = tmp / f"{task}-{start}-{steps}".replace(" ", "-")
                origin = (["--init-from", tmp / f"parent-{kind}"] if start == "pretrained" else
                          ["--tokenizer", kind, *(["--vocab-size", "512"] if kind == "bpe" else []), *SMALL])
                blu("train", *origin, "--data", train_file, "--val-data", val_file, *shape, "--iters", steps,
                    "--eval-every", steps, "--out", out)
                rows.append({"task": task, "tokenizer": kind, "start": start, "steps": steps, "train_s": train_s(out),
                             "exact_match": exact_match(out, val_chats), "held_out": len(val_chats)})
                print(table(rows[-1:]), flush=True)
    for kind in parents:
        rows.append({"task": "pretraining on tiny Shakespeare", "tokenizer": kind, "start": "scratch",
                     "steps": args.parent_steps, "train_s": train_s(tmp / f"parent-{kind}"),
                     "exact_match": float("nan"), "held_out": 0})
    return rows


def step_costs(args, context: int, batch: int = 32) -> list[dict]:
    """Milliseconds per optimizer step and tokens per second of each way of making a batch of
    rows of the reversal task (char, the model of its learning curve) at this context."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from blu.chat_kinds import chat_tokenizer
    from blu.chat_mask import conversation_tokens
    from blu.chat_template import ChatFormat
    from blu.chat_train import IGNORE, _pack, padded
    from blu.config import ModelConfig
    from blu.model import Transformer
    from blu.tokenizers import CharTokenizer

    chats, _ = reversal_chats(3000, 0, seed=5)
    text = args.corpus.read_text(encoding="utf-8")
    tokenizer = chat_tokenizer(CharTokenizer.from_text(text + "".join(m["content"] for c in chats for m in c["messages"])))
    rows = [conversation_tokens(ChatFormat(tokenizer), c["messages"]) for c in chats]
    conversations = _pack([(ids[: context + 1], mask[: context + 1]) for ids, mask in rows])
    lengths = np.diff(conversations.starts) - 1  # the input positions of each conversation
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layer=2, n_head=4, n_kv_head=4,
                                    hidden_dim=192, context=context))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor(tokenizer.encode(text[:200_000]))
    generator = torch.Generator().manual_seed(0)

    def windows():
        starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=generator).tolist()
        x = torch.stack([ids[s : s + context + 1] for s in starts])
        return x[:, :-1], x[:, 1:], None, batch * context

    def chosen():
        return torch.randint(0, len(conversations), (batch,), generator=generator).numpy()

    def padded_rows():  # what ChatBatches gives
        rows = chosen()
        return *padded(conversations, rows), None, int(lengths[rows].sum())

    def context_wide():
        rows = chosen()
        x, y = padded(conversations, rows)
        return (F.pad(x, (0, context - x.shape[1])), F.pad(y, (0, context - y.shape[1]), value=IGNORE), None,
                int(lengths[rows].sum()))

    waiting = []

    def packed_rows():
        """Whole conversations laid end to end in rows of `context`, each attending to itself only."""
        xs, ys, owners = [], [], []
        for _ in range(batch):
            x, y = torch.zeros(context, dtype=torch.long), torch.full((context,), IGNORE, dtype=torch.long)
            owner, at = torch.full((context,), -1), 0
            while True:  # the conversation that does not fit starts the next row
                if not waiting:
                    waiting.append(int(torch.randint(0, len(conversations), (1,), generator=generator)))
                cx, cy = padded(conversations, waiting[:1])
                n = cx.shape[1]
                if at + n > context:
                    break
                x[at : at + n], y[at : at + n], owner[at : at + n] = cx[0], cy[0], at
                at, waiting[:] = at + n, []
            xs.append(x), ys.append(y), owners.append(owner)
        owner = torch.stack(owners)
        causal = torch.ones(context, context, dtype=torch.bool).tril()
        mask = (owner[:, :, None] == owner[:, None, :]) & causal
        real = int((owner >= 0).sum())
        return torch.stack(xs), torch.stack(ys), mask[:, None], real  # padding attends to padding: no empty row

    sdpa = F.scaled_dot_product_attention

    def step(make) -> tuple[int, int, int]:
        x, y, mask, real = make()
        if mask is not None:  # this step's forward attends under the block-diagonal mask instead of the causal one
            F.scaled_dot_product_attention = lambda q, k, v, is_causal, enable_gqa: sdpa(
                q, k, v, attn_mask=mask, enable_gqa=enable_gqa)
        try:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        finally:
            F.scaled_dot_product_attention = sdpa
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return x.numel(), real, int((y != IGNORE).sum())

    makers = {"plain text windows": windows, "conversations padded to the batch's longest (blu)": padded_rows,
              "conversations padded to the context": context_wide,
              "conversations packed, block-diagonal mask": packed_rows}
    totals = {name: np.zeros(4) for name in makers}  # seconds, positions, real tokens, targets
    for _ in range(args.rounds):
        for name, make in makers.items():  # side by side: each round runs every way in turn
            for _ in range(3):
                step(make)
            for _ in range(args.cost_steps):
                start = time.perf_counter()
                counts = step(make)
                totals[name] += (time.perf_counter() - start, *counts)
    steps = args.rounds * args.cost_steps
    return [{"context": context, "batch": name, "ms_per_step": s / steps * 1e3, "positions_per_step": p / steps,
             "padding_share": 1 - r / p, "real_tokens_per_s": r / s, "targets_per_step": t / steps,
             "targets_per_s": t / s} for name, (s, p, r, t) in totals.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[150, 300, 600, 1200], help="reversal budgets")
    parser.add_argument("--fact-steps", type=int, nargs="*", default=[25, 50, 100, 200], help="fact table budgets")
    parser.add_argument("--parent-steps", type=int, default=300, help="pretraining steps of each parent")
    parser.add_argument("--held-out", type=int, default=100, help="held-out reversal conversations")
    parser.add_argument("--cost-steps", type=int, default=40, help="timed steps per way of batching per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contexts", type=int, nargs="*", default=[48, 256], help="contexts of the step costs")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.corpus = shakespeare()
        if args.smoke:
            smoke_cache(tmp)
            args.corpus = small_corpus(tmp)
            args.steps, args.fact_steps, args.parent_steps, args.held_out = [10], [5], 10, 5
            args.cost_steps, args.rounds, args.contexts = 2, 1, [48]
        curves = learning_curves(tmp, args)
        costs = [row for context in args.contexts for row in step_costs(args, context)]
    print(table(curves))
    print(table(costs))
    print("wrote", save("chat_task", {"learning": curves, "step_costs": costs}, args.smoke))


if __name__ == "__main__":
    main()
