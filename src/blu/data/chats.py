"""Conversation data: JSONL whose lines are {"messages": [{"role": ..., "content": ...}, ...]},
the format of TRL and of OpenAI's fine-tuning API, read a line at a time and checked strictly.

A line is refused, naming its file and line number, when it is not JSON, has no list of
messages, a message's role is not system, user or assistant, a content is not a string, or
no assistant turn is there to learn from. With --skip-bad-files such a line is left out and
listed instead. Blank lines are skipped. The validation conversations are a seeded draw of
whole conversations (one is never cut in two), or those of --val-data."""

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BluError

ROLES = ("system", "user", "assistant")


def is_conversation_file(path) -> bool:
    """Whether `path` is JSONL whose first non-blank line is a record with "messages"."""
    path = Path(path)
    if not (path.is_file() and path.name.endswith(".jsonl")):
        return False
    try:
        with open(path, "rb") as stream:
            for line in stream:
                if line.strip():
                    record = json.loads(line)
                    return isinstance(record, dict) and "messages" in record
    except (OSError, ValueError):
        return False
    return False


def problem(record) -> str | None:
    """What is wrong with a parsed line as a conversation (None: nothing)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        return 'has no "messages" list'
    for i, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            return f"messages[{i}] has the role {role!r}, not one of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"messages[{i}] has a content that is not a string"
    if not any(m["role"] == "assistant" for m in record["messages"]):
        return "has no assistant turn to learn from"
    return None


def read_conversations(path, skipped: list[str] | None = None) -> Iterator[list[dict]]:
    """The conversations of a file, each a list of {"role", "content"}. A bad line raises a
    one-line BluError naming file and line, or, given `skipped`, is listed there and left out."""
    path = Path(path)
    try:
        stream = open(path, "rb")
    except OSError as error:
        raise BluError(f"{path}: cannot read ({error.strerror or error})") from None
    with stream:
        for number, line in enumerate(stream, start=1):
            try:
                text = line.decode("utf-8")
                reason = None
                record = json.loads(text) if text.strip() else None
            except UnicodeDecodeError:
                reason = "is not UTF-8"
            except ValueError:
                reason = "is not JSON"
            if reason is None and record is None:
                continue
            reason = reason or problem(record)
            if reason is not None:
                message = f"{path}: line {number} {reason}"
                if skipped is None:
                    raise BluError(message + " (--skip-bad-files leaves such lines out)")
                skipped.append(message)
                continue
            yield [{"role": m["role"], "content": m["content"]} for m in record["messages"]]


def validation_choice(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of `n` conversations are held out (bool per conversation): a seeded draw of
    round(n * fraction) whole conversations, at least one, and never all of them."""
    if n < 2:
        raise BluError(f"{n} conversation{'s' if n != 1 else ''} cannot be split into training and validation: "
                       "give more, or --val-data")
    count = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    held = np.zeros(n, dtype=bool)
    held[order[:count]] = True
    return held


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
