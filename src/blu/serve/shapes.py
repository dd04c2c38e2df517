"""OpenAI's response objects, as the official `openai` client reads them (its types/completion*.py
and types/chat/chat_completion*.py): one class per request that builds its chunks, streamed or
collected, from the engine's events."""

import secrets
import time

from .events import Piece, TokenInfo
from .protocol import Call


def utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class Shaper:
    """Builds the objects of one request's answer. `offsets` follow each choice's text for the
    completions logprobs' text_offset."""

    def __init__(self, call: Call, model_id: str):
        self.call, self.model_id = call, model_id
        self.chat = call.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.offsets = [len(call.prompt) if call.echo else 0] * call.job.n

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": kind if self.chat else "text_completion", "created": self.created,
                "model": self.model_id, "system_fingerprint": None}

    def usage(self, completion_tokens: int) -> dict:
        prompt = len(self.call.job.prompt_ids) if self.call.prompt else 0  # an empty prompt reads start_ids: not the user's
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}

    def logprobs(self, index: int, tokens: list[TokenInfo]) -> dict | None:
        if self.call.logprobs is None:
            return None
        if self.chat:
            return {"content": [{"token": t.text, "logprob": t.logprob, "bytes": utf8(t.text),
                                 "top_logprobs": [{"token": a, "logprob": lp, "bytes": utf8(a)} for a, lp in t.top]}
                                for t in tokens], "refusal": None}
        offsets = []
        for t in tokens:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(t.text)
        return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [dict(t.top) for t in tokens], "text_offset": offsets}

    # streamed

    def opening_chunks(self) -> list[dict]:
        """Chat: the assistant role first, per choice; completions with echo: the prompt."""
        if self.chat:
            return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.call.job.n)]
        if self.call.echo:
            return [self._chunk(i, self.call.prompt) for i in range(self.call.job.n)]
        return []

    def piece_chunk(self, piece: Piece) -> dict:
        content = {"content": piece.text} if self.chat else piece.text
        return self._chunk(piece.index, content, self.logprobs(piece.index, piece.tokens))

    def finish_chunk(self, index: int, reason: str) -> dict:
        return self._chunk(index, {} if self.chat else "", finish_reason=reason)

    def usage_chunk(self, completion_tokens: int) -> dict:
        return {**self._envelope(True), "choices": [], "usage": self.usage(completion_tokens)}

    def _chunk(self, index: int, content, logprobs=None, finish_reason=None) -> dict:
        choice = {"index": index, ("delta" if self.chat else "text"): content, "logprobs": logprobs,
                  "finish_reason": finish_reason}
        chunk = {**self._envelope(True), "choices": [choice]}
        if self.call.include_usage:
            chunk["usage"] = None  # OpenAI: every chunk but the last has usage null
        return chunk

    # collected

    def whole(self, texts: list[str], tokens: list[list[TokenInfo]], reasons: list[str], completion_tokens: int) -> dict:
        choices = []
        for index, (text, reason) in enumerate(zip(texts, reasons)):
            logprobs = self.logprobs(index, tokens[index])
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                                "logprobs": logprobs, "finish_reason": reason})
            else:
                text = (self.call.prompt if self.call.echo else "") + text
                choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
        return {**self._envelope(False), "choices": choices, "usage": self.usage(completion_tokens)}
