"""Chat messages into a prompt: with the run's own chat template where it has one (an imported
checkpoint's Jinja template, rendered in a sandbox by blu.chat_template), else as a plain transcript.

The transcript is for base models trained on the user's text, with no chat markers in their
vocabulary (ChatML's `<|im_start|>` would be characters the model never saw): one `role: content`
line each, ending with `assistant: ` for the model to continue, made of ordinary characters as
litgpt's fallback and llama.cpp's base-model tests do, and default stop strings (`\\nuser:` and
the like) end the reply before the model writes the next turn. A transcript template is one
string with `{role}` and `{content}` (`--chat-template FILE` holds it), filled by plain
replacement, never evaluated.

A run's own template renders the prompt exactly as transformers' apply_chat_template does, and
the reply ends at the template's end-of-turn token (a char run's plain template: at its end
text). Either way a trailing assistant message is continued rather than answered (llama.cpp's
prefill, transformers' continue_final_message)."""

from pathlib import Path

from ..chat_template import ChatFormat, ChatTemplateError
from ..errors import BluError
from .errors import ApiError

DEFAULT_TEMPLATE = "{role}: {content}\n"
STANDARD_ROLES = ("system", "user", "assistant")


class ChatTemplate:
    """The plain transcript (or the one of --chat-template FILE)."""

    description = "transcript template (a base model)"
    stop_ids = None  # the tokenizer's own

    def __init__(self, template: str = DEFAULT_TEMPLATE):
        if template.count("{content}") != 1:
            raise BluError("a chat template must contain {content} exactly once")
        self.template = template
        self.before, self.after = template.split("{content}")

    @classmethod
    def from_file(cls, path) -> "ChatTemplate":
        try:
            return cls(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise BluError(f"cannot read the chat template {path} ({error.strerror or error})") from None

    def render(self, messages: list[tuple[str, str]]) -> str:
        """The prompt for (role, content) messages: the transcript, then the assistant's turn
        opened, or the last message's text left open when it is the assistant's."""
        if messages and messages[-1][0] == "assistant":
            done, (role, content) = messages[:-1], messages[-1]
            return self._lines(done) + self.before.replace("{role}", role) + content
        return self._lines(messages) + self.before.replace("{role}", "assistant")

    def encode(self, prompt: str, tokenizer) -> list[int]:
        return tokenizer.encode(prompt)

    def check(self, tokenizer) -> None:
        """The template's own characters must be in the vocabulary, or every chat request would fail."""
        if unknown := tokenizer.unknown_chars(self.before.replace("{role}", "") + self.after.replace("{role}", "")):
            raise BluError(f"the chat template has characters the model never saw: {''.join(unknown)!r}")

    def stops(self, roles) -> list[str]:
        """What would begin another turn: the separator, then a role's opening, for every role
        seen and the standard ones (so the model stops before writing the user's next line)."""
        openings = {self.after + self.before.replace("{role}", role).rstrip() for role in (*STANDARD_ROLES, *roles)}
        return sorted(s for s in openings if s.strip())

    def _lines(self, messages) -> str:
        # Each part filled on its own, so that a role or content holding "{content}" stays text.
        return "".join(self.before.replace("{role}", role) + content + self.after.replace("{role}", role)
                       for role, content in messages)


class RunTemplate:
    """The run's own chat template (an imported checkpoint's, or the one a byte, bpe or char run
    got for fine-tuning on conversations: chat_kinds.py), with the same methods as ChatTemplate."""

    description = "the run's own chat template"

    def __init__(self, tokenizer):
        self.format = ChatFormat(tokenizer)
        self.template = self.format.source
        # The reply ends at the template's end-of-turn token as well as at the tokenizer's own stops.
        end = [] if self.format.end_of_turn is None else [self.format.end_of_turn]
        self.stop_ids = sorted(set(tokenizer.stop_ids) | set(end))

    def render(self, messages: list[tuple[str, str]]) -> str:
        try:
            return self.format.prompt([{"role": role, "content": content} for role, content in messages])
        except ChatTemplateError as error:
            raise ApiError(400, str(error), "messages", "chat_template_error") from None

    def encode(self, prompt: str, tokenizer) -> list[int]:
        return self.format.encode(prompt)

    def check(self, tokenizer) -> None:
        pass  # compiled when made; every request is rendered on its own

    def stops(self, roles) -> list[str]:
        # The end-of-turn token ends the reply, whatever text the model writes; a template with
        # none (a char run's) ends it at the text it writes after a reply, its blank line.
        return [self.format.end_text] if self.format.end_text else []


def chat_template_for(tokenizer, path=None):
    """--chat-template FILE's transcript template, else the run's own chat template where its
    tokenizer has one, else the plain transcript; checked against the tokenizer."""
    if path is not None:
        template = ChatTemplate.from_file(path)
    elif getattr(tokenizer, "chat_template", None):
        template = RunTemplate(tokenizer)
    else:
        template = ChatTemplate()
    template.check(tokenizer)
    return template
