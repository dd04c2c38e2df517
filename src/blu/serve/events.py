"""What passes between the engine thread and the requests: a `Job` in, its events out."""

from dataclasses import dataclass, field
from typing import Callable

from ..config import SamplingOptions


@dataclass
class TokenInfo:
    """A generated token's text and the model's own log-probability of it (before temperature and
    truncation, as vLLM reports them), with the likeliest alternatives when they were asked for."""

    text: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Piece:
    index: int  # which choice
    text: str  # text now safe to show (never part of a stop string)
    tokens: list[TokenInfo]  # the tokens of that text, when log-probabilities were asked for


@dataclass
class Finish:
    index: int
    reason: str  # "stop" (a stop string) or "length" (max_tokens)
    completion_tokens: int  # tokens generated, those of a stop string included


@dataclass
class Failure:
    message: str  # the engine failed; the job is over


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
    send: Callable[[object], None] = print  # receives Piece, Finish and Failure events, from the engine thread
    cancelled: bool = False  # set when the client has gone: its rows leave before the next step
    rows_left: int = field(default=0, repr=False)
