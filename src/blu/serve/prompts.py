"""What a prompt may be, read into token ids: a string, a list of strings, a list of token ids,
or a list of lists of token ids (OpenAI's four forms), and the tokenizer's routes' bodies.

Token ids are kept exactly as given, never decoded and encoded again (which changes a BPE's ids
at a seam, drops the end-of-text id and turns a character split across tokens into U+FFFD): a
client that tokenized a text (lm-evaluation-harness) is scored on its own ids. An id out of the
vocabulary is refused with its position. <unk> is accepted in ids: it is scored as `blu eval`
scores an unknown character, while a text prompt with one is refused (its characters are listed)."""

from .errors import ApiError
from .settings import ServerSettings


def bad(message: str, param: str | None = "prompt", code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def encode_prompt(text: str, tokenizer, param: str, settings: ServerSettings, encode=None) -> list[int]:
    """Prompt ids (by `encode`, default the tokenizer's; a run's chat template reads its special
    tokens); characters outside the vocabulary are refused with a list of them (blu generate
    drops them with a note on stderr, which an API client cannot read)."""
    if len(text) > settings.max_prompt_chars:
        raise bad(f"the prompt is {len(text):,} characters; this server takes at most {settings.max_prompt_chars:,}",
                  param, "prompt_too_long")
    if unknown := tokenizer.unknown_chars(text):
        shown = "".join(unknown[:50]) + ("..." if len(unknown) > 50 else "")
        raise bad(f"the prompt has {len(unknown)} characters the model never saw: {shown!r}", param, "unknown_characters")
    return (encode or tokenizer.encode)(text)


def is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def token_ids(value, where: str, tokenizer, settings: ServerSettings, param: str = "prompt") -> list[int]:
    """`value`, a list of token ids, checked: each an integer of the vocabulary (the first that is
    not is named, as `where[i]`), at most max_prompt_chars of them."""
    if not isinstance(value, list):
        raise bad(f"{where} must be a list of token ids", param)
    if len(value) > settings.max_prompt_chars:
        raise bad(f"{where} is {len(value):,} tokens; this server takes at most {settings.max_prompt_chars:,}",
                  param, "prompt_too_long")
    vocab = tokenizer.vocab_size
    for i, token in enumerate(value):
        if not is_id(token) or not 0 <= token < vocab:
            raise bad(f"{where}[{i}] is {token!r}: token ids must be integers from 0 to {vocab - 1}", param,
                      "invalid_token_id")
    return value


def text_of(tokenizer, ids: list[int]) -> str:
    """The text of ids as generation streams it (the offsets of log-probabilities count in it)."""
    decoder = tokenizer.stream_decoder()
    return "".join(decoder.feed(token) for token in ids) + decoder.flush()


def completion_prompts(prompt, tokenizer, settings: ServerSettings) -> list[tuple[list[int], str]]:
    """(ids, text) for each prompt of a completions request: its ids (empty for an empty string,
    which the job starts after start_ids) and its text, which echo returns."""
    if isinstance(prompt, str):
        return [(encode_prompt(prompt, tokenizer, "prompt", settings), prompt)]
    if not isinstance(prompt, list) or not prompt:
        raise bad("prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids")
    if len(prompt) > settings.max_prompts:
        raise bad(f"the request has {len(prompt):,} prompts; this server takes at most {settings.max_prompts:,}",
                  code="too_many_prompts")
    if not any(isinstance(p, (str, list)) for p in prompt):  # token ids: a bad one is named by its position
        ids = token_ids(prompt, "prompt", tokenizer, settings)
        return [(ids, text_of(tokenizer, ids))]
    if all(isinstance(p, str) for p in prompt):
        return [(encode_prompt(p, tokenizer, "prompt", settings), p) for p in prompt]
    if all(isinstance(p, list) for p in prompt):
        out = []
        for index, item in enumerate(prompt):
            if not item:
                raise bad(f"prompt[{index}] is empty: a prompt of token ids needs at least one")
            ids = token_ids(item, f"prompt[{index}]", tokenizer, settings)
            out.append((ids, text_of(tokenizer, ids)))
        return out
    raise bad("prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids, "
              "not a mixture")
