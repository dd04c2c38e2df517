"""A row of the engine's batch: one choice of a job, with its generator, its text stream, and
the text it has shown but not yet sent.

A choice sends its text at most once per `interval` seconds (the engine's, which grows with
the rows: see Engine.interval) and at once when it ends: every event costs the event loop a
wake-up, a chunk and a write, and the client a read, per stream; on a small CPU that per-token
cost, not the model, is what limited the server (BENCHMARKS.md, "Serving speed"). The text, its
log-probabilities and where each token's text begins are the same whatever the interval: only
how many pieces it comes in changes."""

import secrets

import torch

from ..text_stream import TextStream
from .events import Finish, Job, TextDelta, TokenInfo


class Choice:
    def __init__(self, job: Job, index: int, device, tokenizer):
        self.job, self.index = job, index
        seed = secrets.randbits(63) if job.seed is None else job.seed + index
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.text = TextStream(tokenizer, job.stop, job.max_tokens, job.stop_ids)
        self.infos: dict[int, TokenInfo] = {}  # by position, until the text of their token is shown
        self.unsent, self.unsent_tokens = "", []  # shown, not yet sent
        self.due = 0.0  # when the next delta may go (time.monotonic): the first goes at once

    def advance(self, token: int, info: TokenInfo | None, now: float, interval: float, outgoing: list) -> bool:
        """Take the next token; add what is due to its client to `outgoing`, as (job, event),
        the next delta `interval` seconds after this one at the earliest. True when the choice is done."""
        text = self.text
        if info is not None:
            self.infos[text.tokens] = info
        self.unsent += text.feed(token)
        if self.infos:
            for position, offset in text.released:
                if (released := self.infos.pop(position, None)) is not None:
                    released.offset = offset
                    self.unsent_tokens.append(released)
        if text.reason is None and now < self.due:
            return False
        if self.unsent or self.unsent_tokens:
            outgoing.append((self.job, TextDelta(self.index, self.unsent, self.unsent_tokens)))
            self.unsent, self.unsent_tokens, self.due = "", [], now + interval
        if text.reason is None:
            return False
        outgoing.append((self.job, Finish(self.index, text.reason, text.tokens)))
        return True
