"""Fine-tuning on conversations: the conversations as ids and assistant masks (chat_mask.py),
cached; the batches of whole conversations, one per row, padded; the loss on the assistant's
tokens of the whole global batch; the validation loss on the held-out conversations' ones.

A row holds one conversation, right-padded to the longest of its batch: the model is causal,
so a conversation never attends to another one or to the padding after it. (Packing several
into a row, under the block-diagonal mask that needs, measured slower: benchmarks/chat_task.py.)
A conversation longer than context + 1 tokens is cut there: the model learns the replies within
its context, and one with no assistant token left is left out and counted. The cache, under
$BLU_CACHE/chats/<key>.npz, is keyed by the files' SHA-256, the tokenizer and template, the
context and the split."""

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .chat_mask import conversation_tokens
from .chat_template import ChatFormat, ChatTemplateError
from .data.batches import BatchSampler
from .data.chats import file_digest, is_conversation_file, read_conversations, validation_choice
from .device import autocast_for
from .errors import BluError
from .files import cache_dir

IGNORE = -100  # a target the loss leaves out (F.cross_entropy's ignore_index)
FORMAT = 2  # 2: the held-out conversations are drawn before those with no reply within the context are left out


class Conversations(NamedTuple):
    """Conversations as one array of ids and one of masks, each starting at starts[i]."""

    ids: np.ndarray
    mask: np.ndarray
    starts: np.ndarray  # len + 1 offsets

    def __len__(self) -> int:
        return len(self.starts) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.starts[i], self.starts[i + 1]
        return self.ids[a:b], self.mask[a:b]

    def targets(self) -> int:
        return int(sum(self.row(i)[1][1:].sum() for i in range(len(self))))


def _pack(rows) -> Conversations:
    starts = np.cumsum([0] + [len(ids) for ids, _ in rows])
    ids = np.concatenate([np.asarray(ids, dtype=np.int32) for ids, _ in rows]) if rows else np.zeros(0, np.int32)
    mask = np.concatenate([np.asarray(m, dtype=bool) for _, m in rows]) if rows else np.zeros(0, bool)
    return Conversations(ids, mask, starts)


def encode_conversations(chat: ChatFormat, path, context: int, skipped: list[str] | None) -> list:
    """(ids, mask) of each conversation of `path`, cut to context + 1 tokens; None for one that
    holds no assistant token within that (left out, after the split, so that the split of a file
    does not depend on the context)."""
    rows = []
    for number, messages in enumerate(read_conversations(path, skipped), start=1):
        try:
            ids, mask = conversation_tokens(chat, messages)
        except ChatTemplateError as error:
            raise BluError(f"{path}: conversation {number}: {error}") from None
        ids, mask = ids[: context + 1], mask[: context + 1]
        rows.append((ids, mask) if any(mask[1:]) else None)
    return rows


def run_conversations(tokenizer, data, val_data, fraction: float, seed: int, context: int, skip_bad: bool, log):
    """chat_data for a run's tokenizer, which carries its chat template (chat_kinds.chat_tokenizer)."""
    if val_data is not None and not is_conversation_file(val_data):
        raise BluError(f"--val-data {val_data} does not hold conversations ({{\"messages\": [...]}} lines) as --data does")
    return chat_data(ChatFormat(tokenizer), tokenizer.to_json(), data, val_data, fraction, seed, context, skip_bad, log)


def chat_data(chat: ChatFormat, tokenizer_json: str, data, val_data, fraction: float, seed: int, context: int,
              skip_bad: bool, log) -> tuple[Conversations, Conversations, dict]:
    """The training and validation conversations of --data (and --val-data), from the cache or
    encoded into it, and what config.json records of them."""
    files = [Path(data)] + ([Path(val_data)] if val_data else [])
    material = {"format": FORMAT, "files": [file_digest(f) for f in files], "val_data": bool(val_data),
                "tokenizer": hashlib.sha256(tokenizer_json.encode()).hexdigest(), "template": chat.source,
                "fraction": fraction, "seed": seed, "context": context, "skip_bad": skip_bad}
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "chats" / f"{key}.npz"
    if path.exists():
        saved = np.load(path)
        parts = [Conversations(saved[f"{p}_ids"], saved[f"{p}_mask"], saved[f"{p}_starts"]) for p in ("train", "val")]
        info = json.loads(str(saved["info"]))
    else:
        skipped = [] if skip_bad else None
        rows = encode_conversations(chat, files[0], context, skipped)
        if val_data:
            train_rows, val_rows = rows, encode_conversations(chat, files[1], context, skipped)
        else:
            held = validation_choice(len(rows), fraction, seed)
            train_rows, val_rows = [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]
        dropped = sum(r is None for r in train_rows + val_rows)
        train_rows, val_rows = [r for r in train_rows if r is not None], [r for r in val_rows if r is not None]
        if not train_rows or not val_rows:
            raise BluError(f"{files[-1] if not val_rows else files[0]} has no conversation with an assistant reply "
                           f"within a context of {context} tokens")
        parts = [_pack(train_rows), _pack(val_rows)]
        info = {"dropped": dropped, "skipped": skipped or []}
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{key}.tmp-{os.getpid()}.npz")
        np.savez(temporary, info=json.dumps(info), **{f"{p}_{k}": getattr(c, k) for p, c in zip(("train", "val"), parts)
                                                      for k in Conversations._fields})
        os.replace(temporary, path)
    if info["dropped"]:
        log(f"{info['dropped']} conversations have no assistant token within the first {context + 1} tokens "
            "(--context) and are left out")
    train, val = parts
    record = {"kind": "conversations", "path": str(Path(data).resolve()), "sha256": material["files"][0],
              "val_data": str(Path(val_data).resolve()) if val_data else None, "val_fraction": fraction,
              "skip_bad_files": skip_bad, "conversations": {"train": len(train), "validation": len(val)},
              "assistant_tokens": {"train": train.targets(), "validation": val.targets()}}
    return train, val, {**record, "skipped": info["skipped"]}


def padded(conversations: Conversations, chosen) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the chosen conversations, one per row, right-padded to the longest:
    targets are the next ids where the mask holds, IGNORE elsewhere and in the padding."""
    rows = [conversations.row(int(i)) for i in chosen]
    width = max(len(ids) for ids, _ in rows) - 1
    x = np.zeros((len(rows), width), dtype=np.int64)
    y = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for r, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[r, :n] = ids[:-1]
        y[r, :n] = np.where(mask[1:], ids[1:], IGNORE)
    return torch.from_numpy(x), torch.from_numpy(y)


class ChatBatches:
    """Random conversations, drawn with a seeded generator (saved and restored, as BatchSampler's);
    under torchrun each rank keeps its slice of the same global draw."""

    def __init__(self, conversations: Conversations, batch_size: int, seed: int, rank: int = 0, ranks: int = 1):
        self.conversations, self.generator = conversations, torch.Generator().manual_seed(seed)
        self._mine, self._global_batch = slice(rank * batch_size, (rank + 1) * batch_size), batch_size * ranks

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = torch.randint(0, len(self.conversations), (self._global_batch,), generator=self.generator)
        return padded(self.conversations, chosen[self._mine].numpy())


def batches_for(run, batch_size: int, world):
    """A run's batch sampler: whole conversations for a chat run, windows of its tokens otherwise."""
    seed = run.train_config.seed
    if run.chats:
        return ChatBatches(run.chats[0], batch_size, seed, world.rank, world.size)
    return BatchSampler(run.train_tokens, batch_size, run.model_config.context, seed, world.rank, world.size)


def target_count(micro_batches, world) -> torch.Tensor:
    """The assistant targets of a step's whole global batch: every micro-batch, every rank."""
    local = sum(int((y != IGNORE).sum()) for _, y in micro_batches)
    return world.sum(torch.tensor(float(local), dtype=torch.float64, device=micro_batches[0][1].device))


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum of the assistant targets' losses (the step divides by the global batch's count)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def micro_loss(logits: torch.Tensor, targets: torch.Tensor, scale, grad_accum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(what to backpropagate, what the step's loss_sum adds) for one micro-batch. Documents
    (scale None): every target counts, the micro-batch's mean over grad_accum. Conversations
    (scale: ranks / the global batch's assistant targets): the sum of the assistant targets'
    losses times scale, so that DDP's mean over the ranks gives sum / count of the global batch,
    and train_loss (the ranks' mean of loss_sum / grad_accum) is that same mean."""
    if scale is None:
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return loss / grad_accum, loss
    loss = summed_loss(logits, targets) * scale
    return loss, loss * grad_accum


@torch.no_grad()
def evaluate_chats(model, conversations: Conversations, byte_lengths_by_id, batch_size: int, world) -> tuple[float, float]:
    """The mean loss over every assistant target of the validation conversations (each rank a
    share, summed), and bits per byte of their text (nan when the tokenizer has no byte table)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(conversations)
    first, end = n * world.rank // world.size, n * (world.rank + 1) // world.size
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, targets, bytes
    for at in range(first, end, batch_size):
        x, y = padded(conversations, range(at, min(at + batch_size, end)))
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            logits = model(x)
        sums[0] += summed_loss(logits, y).double()
        sums[1] += (y != IGNORE).sum()
        if byte_lengths_by_id is not None:
            lengths = torch.as_tensor(byte_lengths_by_id, device=device)[y.clamp(min=0)]
            sums[2] += (lengths * (y != IGNORE)).sum()
    model.train(was_training)
    loss, count, n_bytes = world.sum(sums).tolist()
    return loss / count, loss / math.log(2) / n_bytes if n_bytes else float("nan")
