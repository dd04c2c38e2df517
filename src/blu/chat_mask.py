"""A conversation as training tokens: its ids as the run's chat template renders them, and which
of them the loss is taken on (the assistant's).

The targets are each assistant turn's tokens and the end-of-turn token that closes it (for a
template with no such token, a char run's, the characters of its end text: ChatFormat.end_text); the system
and user turns, the template's markers and the opening of the assistant's turn are not. The
turns are found by rendering the conversation turn by turn: the text before assistant message i
is what the template writes for messages[:i] with the assistant's turn opened
(add_generation_prompt), so the mask follows from the template itself, for any template, with
or without transformers' `{% generation %}` blocks. A template that writes the earlier turns
differently once later ones follow (some drop the reasoning of past replies) is refused: the
model would be trained on a text it never sees when it answers.

A token that straddles the start of a turn counts as the assistant's, as in transformers'
return_assistant_tokens_mask (char_to_token of the span's first character)."""

from .chat_template import ChatFormat, ChatTemplateError


def conversation_tokens(chat: ChatFormat, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """The ids of a whole conversation and, for each, whether it is an assistant target."""
    for i, message in enumerate(messages):
        if held := next((s for s in chat.specials if s in message["content"]), None):
            raise ChatTemplateError(f"messages[{i}] holds the special token {held!r}, which only the chat template may write")
    full = chat.render(messages, add_generation_prompt=False)
    encoding = chat.parsing.encode(full, add_special_tokens=False)
    ids, offsets = encoding.ids, encoding.offsets
    mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = chat.render(messages[:i], add_generation_prompt=True)
        if not full.startswith(prefix):
            raise ChatTemplateError(f"the chat template writes the turns before messages[{i}] differently once an "
                                    "assistant reply follows, so its replies cannot be picked out for training")
        start = len(prefix)
        if start >= len(full):
            raise ChatTemplateError(f"the chat template leaves out messages[{i}], the assistant's")
        content = message["content"].strip()
        at = full.find(content, start) if content else -1
        content_end = at + len(content) if at >= 0 else start
        first = encoding.char_to_token(start)
        if first is None:  # a character no token covers (a trimmed space): the next one that is
            first = next(j for j, (a, b) in enumerate(offsets) if b > start)
        last = next((j for j in range(first, len(ids)) if ids[j] == chat.end_of_turn and offsets[j][0] >= content_end),
                    None)
        if last is None:  # no end-of-turn token: the reply's text, and the template's end text after it
            end = max(content_end, start + 1)
            if chat.end_text:  # the last place it starts in the blank space after the reply's text
                blank = len(full) - len(full[content_end:].lstrip())
                ends = [at + len(chat.end_text) for at in range(content_end, blank + 1) if full.startswith(chat.end_text, at)]
                end = ends[-1] if ends else end
            last = max(j for j, (a, b) in enumerate(offsets) if a < end)
        for j in range(first, last + 1):
            mask[j] = True
    return ids, mask
