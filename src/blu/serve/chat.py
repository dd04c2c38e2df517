"""Chat on a base model: messages become a plain transcript, one `role: content` line each,
ending with `assistant: ` for the model to continue.

blu's models are base models trained on the user's text, with no chat markers in their
vocabulary (ChatML's `<|im_start|>` would be characters the model never saw). So the template
is made of ordinary characters, as litgpt's fallback and llama.cpp's base-model tests do, and
default stop strings (`\\nuser:` and the like) end the reply before the model writes the next
turn. A trailing assistant message is continued rather than answered (llama.cpp's prefill).

A template is one string with `{role}` and `{content}` (`--chat-template FILE` holds it); it is
filled by plain replacement, never evaluated (no Jinja: templates are data)."""

from pathlib import Path

from ..errors import BluError

DEFAULT_TEMPLATE = "{role}: {content}\n"
STANDARD_ROLES = ("system", "user", "assistant")


class ChatTemplate:
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

    def stops(self, roles) -> list[str]:
        """What would begin another turn: the separator, then a role's opening, for every role
        seen and the standard ones (so the model stops before writing the user's next line)."""
        openings = {self.after + self.before.replace("{role}", role).rstrip() for role in (*STANDARD_ROLES, *roles)}
        return sorted(s for s in openings if s.strip())

    def _lines(self, messages) -> str:
        # Each part filled on its own, so that a role or content holding "{content}" stays text.
        return "".join(self.before.replace("{role}", role) + content + self.after.replace("{role}", role)
                       for role, content in messages)
