"""One text's tokens to the text to show: whole characters, stop strings, the end-of-text token
and the token limit, in one object that `blu generate`, `generate_many` and the server all feed.

    stream = TextStream(tokenizer, stop=["\\n\\n"], max_tokens=200)
    for token in tokens:
        print(stream.feed(token), end="")   # only text that is final: never part of a stop string
        if stream.reason:                    # "stop" (a stop string or end-of-text) or "length"
            break
    print(stream.finish(), end="")           # what was held back, when the tokens ran out first

After each `feed` or `finish`, `released` lists the tokens whose text that call completed, with
where that text begins in the text shown, so that something reported per token (the server's
log-probabilities) goes out with the text it belongs to. Tokens of a stop string are never
released: their text is never shown. The end token, which stands for no text, is released where
the text ends (it was generated, and counted, as any other).
"""

from collections import deque

from .tokenizers.base import Tokenizer


class StopStrings:
    """Cuts streamed text at the first stop string, holding back only what could still begin one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is now safe to show."""
        if self.stopped:
            return ""
        self.pending += piece
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        """What was held back, once no more text comes (nothing after a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class TextStream:
    """The text of one sequence of generated tokens, fed one id at a time.

    `stop`: strings that end the text before them; `max_tokens`: the text ends ("length") with
    the token that reaches it (None: the caller ends it with `finish`); `end_ids`: tokens that end
    the text ("stop") and are never shown, by default the tokenizer's end-of-text token where it
    has one (Tokenizer.stop_ids: an imported one adds its checkpoint's). `tokens` counts the
    tokens fed, those of a stop string and the end token included."""

    def __init__(self, tokenizer: Tokenizer, stop=(), max_tokens: int | None = None, end_ids=None):
        self.decoder = tokenizer.stream_decoder()
        self.stops = StopStrings(stop)
        self.max_tokens = max_tokens
        self.end_ids = frozenset(end_ids if end_ids is not None else tokenizer.stop_ids)
        self.tokens = 0
        self.reason: str | None = None  # why the text ended: "stop" or "length"; None while it goes on
        self.released: list[tuple[int, int]] = []  # (token position, character offset), see the module docstring
        self._decoded = 0  # characters the decoder has given for the tokens so far
        self._shown = 0  # characters shown
        self._unshown: deque[tuple[int, int, int]] = deque()  # (position, start, end) of tokens not wholly shown

    def feed(self, token: int) -> str:
        """Text that is now safe to show after `token`; nothing once the text has ended."""
        self.released = []
        if self.reason is not None:
            return ""
        position, self.tokens = self.tokens, self.tokens + 1
        if token in self.end_ids:
            self.reason = "stop"
            shown = self._show(self._flush())
            if not self.stops.stopped:
                self.released.append((position, self._shown))
            return shown
        piece = self.decoder.feed(token)
        self._unshown.append((position, self._decoded, self._decoded + len(piece)))
        self._decoded += len(piece)
        shown = self.stops.feed(piece)
        if self.stops.stopped:
            self.reason = "stop"
        elif self.max_tokens is not None and self.tokens >= self.max_tokens:
            self.reason = "length"
            shown += self._flush()
        return self._show(shown)

    def finish(self) -> str:
        """The text held back, for tokens that ended without a reason of the stream's own (the
        caller's limit: "length"); nothing if the text had ended."""
        self.released = []
        if self.reason is not None:
            return ""
        self.reason = "length"
        return self._show(self._flush())

    def _flush(self) -> str:
        rest = self.stops.feed(self.decoder.flush()) + self.stops.flush()
        if self.stops.stopped:
            self.reason = "stop"
        return rest

    def _show(self, text: str) -> str:
        self._shown += len(text)
        while self._unshown and self._unshown[0][2] <= self._shown:
            position, start, _ = self._unshown.popleft()
            self.released.append((position, start))
        return text
