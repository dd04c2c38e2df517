"""Runs that chat, made in the test (not a test module): a small random Llama imported with a
ChatML template (its tokenizer trained on tiny Shakespeare, as SmolLM2's is laid out), and a
fine-tune of it on conversations whose every reply is the same, which it learns in a few dozen
steps, so that a test can tell an answer that stops at the end of its turn."""

import json
from pathlib import Path

from pretrained_support import smollm_style_tokenizer, write_llama_folder

REPLY = "Aye, my lord."


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def constant_reply_chats(text: str, n: int) -> list[dict]:
    """n conversations: a line of the play asked, REPLY answered."""
    lines = [line for line in text.splitlines() if len(line) > 20]
    return [{"messages": [{"role": "user", "content": lines[i]}, {"role": "assistant", "content": REPLY}]}
            for i in range(n)]


def imported_chatml_run(folder: Path, text: str) -> Path:
    """`blu import` of a random 2-layer Llama whose tokenizer carries a ChatML chat template."""
    from blu.cli import main

    write_llama_folder(folder / "hf", smollm_style_tokenizer(text[:200_000]), "smollm", seed=3)
    if main(["import", "--from", str(folder / "hf"), "--out", str(folder / "run")]):
        raise RuntimeError("blu import failed")
    return folder / "run"


def tuned_chat_run(folder: Path, parent: Path, text: str, iters: int = 40) -> Path:
    """`blu train --init-from PARENT --data chats.jsonl`: 200 conversations (20 held out), an
    evaluation at the start, half way and at the end."""
    from blu.cli import main

    data = write_jsonl(folder / "chats.jsonl", constant_reply_chats(text, 200))
    if main(["train", "--init-from", str(parent), "--data", str(data), "--out", str(folder / "tuned"), "--iters",
             str(iters), "--eval-every", str(iters // 2), "--lr", "3e-3", "--batch-size", "8"]):
        raise RuntimeError("blu train failed")
    return folder / "tuned"
