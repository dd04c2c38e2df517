"""A pretrained checkpoint's chat template (Jinja), rendered as transformers renders it, in Jinja's
sandbox: a template is data from a downloaded file, and it never runs code.

    chat = ChatFormat(tokenizer)             # a run's tokenizer with a chat_template (any kind: chat_kinds.py)
    prompt = chat.prompt([{"role": "user", "content": "Hi"}])   # the text of the conversation so far
    ids = chat.encode(prompt)                # its ids, the template's markers as their special tokens
    chat.end_of_turn                         # the id that ends the assistant's reply (None: unknown)

The environment is transformers' (utils/chat_template_utils.py): an ImmutableSandboxedEnvironment
(no attribute that reaches Python's internals, no method that changes a value) with trim_blocks,
lstrip_blocks and the loop controls, tojson without HTML escaping, raise_exception and
strftime_now, and a namespace that takes no underscore names. A template sees `messages` (dicts of
role and content), `add_generation_prompt` and the checkpoint's `bos_token` and `eos_token`.
Jinja2 3.1.6 closed the last sandbox escape known (CVE-2025-27516, through the attr filter), which
is why blu needs it, as transformers does.

The markers a template writes (`<|im_start|>`) are special tokens: the prompt is encoded with the
special tokens recognised, as apply_chat_template does. A message holding a special token's text is
refused: in a prompt encoded that way, it would close the user's turn and open another one.
"""

from datetime import datetime
import json

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from .errors import BluError

PROBE = "blu probe reply"  # an assistant message found again in a rendering: what follows it ends a turn
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for continue_final_message


class ChatTemplateError(BluError):
    """A template that cannot be compiled or rendered, or a conversation it cannot hold."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters, which no prompt wants.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (a way towards Python's internals), as transformers' does."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        values = dict(*args, **kwargs)
        for name in values:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


class _Generation(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` block, which marks what the assistant
    writes in templates made for training: its body renders as it is (blu finds the assistant's
    tokens turn by turn, chat_mask.py, so the same rule holds for templates without the tag)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def compile_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace)
    try:
        return environment.from_string(source)
    except jinja2.exceptions.TemplateError as error:
        raise ChatTemplateError(f"the chat template does not compile: {_one_line(error)}") from None


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class ChatFormat:
    """A run's chat template (the tokenizer's `chat_template`: an imported checkpoint's, or the one
    chat_kinds.py gives a run of blu's own kinds), ready to turn conversations into prompts and
    ids, with what ends a reply: a token (`end_of_turn`) or, where the template writes no special
    token after a reply (a char run's plain one), the text it writes there (`end_text`)."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("this tokenizer has no chat template")
        self.source = tokenizer.chat_template
        self.template = compile_template(self.source)
        if tokenizer.kind == "char":  # no special tokens: the template's markers are characters
            self.parsing, self.specials, self.variables = _CharParsing(tokenizer), {}, {}
        else:
            # A second tokenizer of the same file that reads special tokens' text as the tokens (the
            # run's own reads it as text, so that a corpus or a completion prompt stays what it says).
            original = tokenizer.original if tokenizer.kind == "hf" else json.loads(tokenizer.to_json())
            self.parsing = HFTokenizer.from_str(json.dumps(original))
            self.specials = {t["content"]: t["id"] for t in original.get("added_tokens", []) if t.get("special")}
            names = {"bos_token": getattr(tokenizer, "bos_id", None), "eos_token": tokenizer.end_id}
            self.variables = {name: tokenizer.hf.id_to_token(i) for name, i in names.items() if i is not None}
        self.end_of_turn = self._find_end_of_turn()
        self.end_text = self._find_end_text() if self.end_of_turn is None else None

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The template's text for `messages` (each a dict of role and content strings)."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as error:  # whatever the template does wrong is the template's: one line, never more
            raise ChatTemplateError(f"the chat template failed: {_one_line(error)}") from None

    def prompt(self, messages: list[dict]) -> str:
        """The prompt for a conversation: rendered with the assistant's turn opened
        (add_generation_prompt), or, when the last message is the assistant's, up to the end of
        its text, for the model to continue (transformers' continue_final_message)."""
        for i, message in enumerate(messages):
            for text in (message["role"], message["content"]):
                if held := next((s for s in self.specials if s in text), None):
                    raise ChatTemplateError(f"messages[{i}] holds the special token {held!r}, which only the "
                                            "chat template may write")
        if not messages or messages[-1]["role"] != "assistant":
            return self.render(messages, add_generation_prompt=True)
        tagged = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + CONTINUE_TAG}]
        rendered = self.render(tagged, add_generation_prompt=False)
        at = rendered.rfind(CONTINUE_TAG.strip())
        if at < 0:
            raise ChatTemplateError("the chat template leaves out the last assistant message, so it cannot be continued")
        return rendered[:at] if rendered[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG else rendered[:at].rstrip()

    def encode(self, prompt: str) -> list[int]:
        """The ids of a rendered prompt: special tokens' text as those tokens, nothing added
        (a template that wants the start-of-text token writes bos_token itself)."""
        return self.parsing.encode(prompt, add_special_tokens=False).ids

    def _after_a_reply(self) -> str | None:
        """What the template writes after a conversation's last message, the assistant's (a probe
        conversation); None where it refuses every probe or leaves the reply out."""
        for before in ([], [{"role": "system", "content": "system"}]):
            probe = [*before, {"role": "user", "content": "user"}, {"role": "assistant", "content": PROBE}]
            try:
                rendered = self.render(probe, add_generation_prompt=False)
            except ChatTemplateError:
                continue
            if PROBE in rendered:
                return rendered[rendered.index(PROBE) + len(PROBE):]
        return None

    def _find_end_of_turn(self) -> int | None:
        """The first special token the template writes after an assistant's message (ChatML's
        <|im_end|>, Llama 3's <|eot_id|>, Llama 2's </s>); None where it writes none."""
        after = self._after_a_reply()
        return None if after is None else next((i for i in self.encode(after) if i in self.specials.values()), None)

    def _find_end_text(self) -> str | None:
        """Where no token ends a reply: the text the template writes after it (the char template's
        blank line), which ends a reply as a stop string; None if it writes nothing there."""
        return self._after_a_reply() or None


class _CharEncoding:
    """A char run's ids with the offsets `tokenizers` gives an encoding (one character each)."""

    def __init__(self, ids: list[int]):
        self.ids, self.offsets = ids, [(i, i + 1) for i in range(len(ids))]

    def char_to_token(self, at: int) -> int | None:
        return at if 0 <= at < len(self.ids) else None


class _CharParsing:
    """A char tokenizer with the `encode` of a `tokenizers` one, for chat_mask.py."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> _CharEncoding:
        return _CharEncoding(self.tokenizer.encode(text))
