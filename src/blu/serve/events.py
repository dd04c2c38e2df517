"""What passes between the API and the engine: a `Job` in; `PromptScores`, `TextDelta`, `Finish`
and `Failure` events out; `Refused` when the engine cannot take a job. The only module both sides
import."""

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ..config import SamplingOptions


class Candidate(NamedTuple):
    """A token and the model's log-probability of it."""

    text: str  # its bytes as text (U+FFFD where it holds part of a character)
    bytes: bytes  # its own bytes (tokenizer.token_bytes): joined, a text's tokens give the text's bytes
    logprob: float | None  # None for a prompt's first token, which nothing before it predicts


@dataclass
class TokenInfo:
    """A generated token with the model's own log-probability of it (before temperature and
    truncation, as vLLM reports them), and the likeliest alternatives when they were asked for."""

    chosen: Candidate
    top: list[Candidate] | None  # None for a prompt's first token
    offset: int = 0  # where its text begins in the choice's text (filled in when the text is shown)


@dataclass
class PromptScores:
    """The job's prompt scored (Job.score): a TokenInfo per prompt token, offsets into the
    prompt's text; sent once, before the choices' first text."""

    tokens: list[TokenInfo]
    prompt: int = 0  # which prompt of its request (set by the API, which knows the request's prompts)


@dataclass
class TextDelta:
    index: int  # which choice
    text: str  # text now safe to show (never part of a stop string)
    tokens: list[TokenInfo]  # the tokens of that text, when log-probabilities were asked for


def coalesce(events: list) -> list:
    """`events` with each choice's text deltas joined into one, in the place of its first: a
    stream that fell behind the engine writes one chunk per choice, not one per token. A
    choice's Finish comes after its last delta, so each choice's events keep their order."""
    out, deltas = [], {}
    for event in events:
        if isinstance(event, TextDelta):
            if (first := deltas.get(event.index)) is not None:
                first.text += event.text
                first.tokens += event.tokens
                continue
            event = deltas[event.index] = TextDelta(event.index, event.text, list(event.tokens))
        out.append(event)
    return out


@dataclass
class Finish:
    index: int
    reason: str  # "stop" (a stop string or the end-of-text token) or "length" (max_tokens)
    completion_tokens: int  # tokens generated, those of a stop string included


@dataclass
class Failure:
    message: str  # the engine failed; the job is over


class Refused(Exception):
    """The engine cannot take a job now (no weights yet, or the queue is full): try again in
    `retry_after_s` seconds."""

    def __init__(self, message: str, code: str, retry_after_s: int):
        super().__init__(message)
        self.code, self.retry_after_s = code, retry_after_s


@dataclass
class Job:
    """One request: `n` continuations of one prompt."""

    prompt_ids: list[int]
    n: int
    max_tokens: int
    options: SamplingOptions
    seed: int | None  # choice i draws from a generator seeded with seed + i
    stop: list[str]
    logprobs: int | None  # alternatives per token (0: only the chosen token's); None: none
    send: Callable[[object], None] = print  # receives the events, from the engine thread: must be thread-safe
    cancelled: bool = False  # set when the client has gone: its rows leave before the next step
    score: int | None = None  # score the prompt first (PromptScores), with this many alternatives per token; None: no
    rows_left: int = field(default=0, repr=False)
    scored: bool = field(default=False, repr=False)
    stop_ids: list[int] | None = None  # the ids that end a choice; None: the tokenizer's (Tokenizer.stop_ids)
