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


LETTERS = "abcdefghijklmnopqrstuvwxyz"
NAMES = ["Arden", "Bevis", "Cato", "Dorcas", "Edric", "Fenna", "Galen", "Hesper", "Ivo", "Jessa", "Kester", "Lune",
         "Milo", "Nerys", "Osric", "Perdita", "Quill", "Rowan", "Silas", "Tamsin", "Ulric", "Viola", "Wystan", "Xan"]
COLOURS = ["red", "blue", "green", "gold", "white", "black"]
PHRASES = ["What colour is {}'s cloak?", "Tell me the colour of {}'s cloak.", "{}'s cloak is which colour?",
           "Which colour does {}'s cloak have?"]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def reversal_chats(n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Reversing a word of 3 or 4 random letters ("reverse kqz" -> "zqk"); the held-out words are
    never trained on, and chance is nil (1 in 26^3 or more)."""
    import random

    rng, words = random.Random(seed), {}
    while len(words) < n_train + n_val:
        words["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 4)))] = None
    chats = [chat(f"reverse {w}", w[::-1]) for w in words]
    return chats[:n_train], chats[n_train:]


def fact_chats() -> tuple[list[dict], list[dict]]:
    """A fixed table (each name's cloak has a colour) asked in four phrasings: each name is held
    out in one of them, so a held-out answer needs the fact, not the phrasing (chance: 1 in 6)."""
    train, val = [], []
    for i, name in enumerate(NAMES):
        for j, phrase in enumerate(PHRASES):
            (val if j == i % len(PHRASES) else train).append(chat(phrase.format(name), COLOURS[i * 7 % len(COLOURS)]))
    return train, val


def exact_match(run: Path, chats: list[dict]) -> float:
    """The share of `chats` whose reference reply the run's greedy reply equals, through the
    run's chat template as blu chat and blu serve apply it."""
    import blu
    from blu.chat_template import ChatFormat
    from blu.samples import greedy_reply, reply_ends

    model = blu.load(run)
    format, ends = ChatFormat(model.tokenizer), reply_ends(model.tokenizer)
    right = 0
    for record in chats:
        *question, reference = record["messages"]
        ids = format.encode(format.prompt(question))
        right += greedy_reply(model.model, model.tokenizer, ids, 32, ends).strip() == reference["content"]
    return right / len(chats)
