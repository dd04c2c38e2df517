"""Conversations scored: what `blu eval` scores when the text is conversations (a JSONL file of
them, or a run's held-out ones), and the counts each evaluation of a conversation run logs.

The score is the one training reports (chat_train.evaluate_chats): the mean loss over every
assistant target (each assistant turn's tokens and its end-of-turn token) and bits per byte of
the replies' text, the system and user turns and the template's markers left out. A run's own
held-out conversations are the ones its training held out: its file, split by its seed, read
from the cache (and refused if the file changed since, as a resume refuses it)."""

from pathlib import Path

import numpy as np

from .chat_template import ChatFormat
from .chat_train import Conversations, _pack, encode_conversations, evaluate_chats, run_conversations
from .config import TrainConfig, from_dict
from .data.chats import is_conversation_file
from .errors import BluError
from .files import read_json
from .runs import holds_run


def token_byte_lengths(tokenizer) -> np.ndarray:
    """The UTF-8 bytes each id stands for, by id (0 for the template's markers and end-of-text)."""
    return np.array([len(b) for b in tokenizer.token_bytes], dtype=np.int64)


def _targets(conversations: Conversations) -> np.ndarray:
    """Which ids are scored: the masked ones, except each conversation's first (nothing predicts it)."""
    targets = conversations.mask.copy()
    targets[conversations.starts[:-1][np.diff(conversations.starts) > 0]] = False
    return targets


def scored_counts(conversations: Conversations) -> dict:
    """What an evaluation row of a conversation run adds to metrics.jsonl: what its loss is over."""
    return {"val_assistant_tokens": int(_targets(conversations).sum()), "val_conversations": len(conversations)}


def is_conversation_run(meta: dict) -> bool:
    return isinstance(meta.get("data"), dict) and meta["data"].get("kind") == "conversations"


def held_out(meta: dict, tokenizer, context: int, log) -> Conversations:
    """The held-out conversations of the run whose config.json is `meta`, encoded with `tokenizer`."""
    d = meta["data"]
    seed = from_dict(TrainConfig, meta.get("train")).seed
    _, val, record = run_conversations(tokenizer, d["path"], d["val_data"], d["val_fraction"], seed, context,
                                       d["skip_bad_files"], log)
    if record["sha256"] != d["sha256"]:
        raise BluError(f"{d['path']} has changed since the run was trained on it (its SHA-256 differs), so its "
                       "held-out conversations are not the ones it held out")
    return val


def file_conversations(path, tokenizer, context: int) -> tuple[Conversations, int]:
    """Every conversation of a JSONL file (cut to context + 1 tokens), and how many had no reply left."""
    if not getattr(tokenizer, "chat_template", None):
        raise BluError(f"{path} holds conversations, and this run's tokenizer has no chat template to render them with")
    encoded = encode_conversations(ChatFormat(tokenizer), path, context, None)
    rows = [r for r in encoded if r is not None]
    dropped = len(encoded) - len(rows)
    if not rows:
        raise BluError(f"{path} has no conversation with an assistant reply within a context of {context} tokens")
    return _pack(rows), dropped


def conversations_to_score(data, meta: dict, tokenizer, context: int, log) -> tuple[Conversations, int] | None:
    """What `blu eval --data DATA` scores as conversations (with how many were left out for
    having no reply within the context): a conversation file; a run folder, or no DATA (the run
    `meta` describes), whose run was trained on conversations. None: the text is not conversations."""
    if data is not None and not holds_run(data):
        return file_conversations(data, tokenizer, context) if is_conversation_file(data) else None
    source = meta if data is None else read_json(Path(data) / "config.json")
    return (held_out(source, tokenizer, context, log), 0) if is_conversation_run(source) else None


def score_conversations(model, tokenizer, conversations: Conversations, batch_size: int, world) -> dict:
    """blu eval's result for conversations: the loss (nats per assistant token) and bits per byte."""
    lengths = token_byte_lengths(tokenizer)
    loss, bpb = evaluate_chats(model, conversations, lengths, batch_size, world)
    targets = _targets(conversations)
    return {"val_loss": loss, "val_bpb": bpb, "assistant_tokens": int(targets.sum()),
            "bytes": int(lengths[conversations.ids[targets]].sum()), "conversations": len(conversations)}
