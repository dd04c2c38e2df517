"""The chat template of each kind of run, given when it starts fine-tuning on conversations
(`blu train --init-from RUN --data chats.jsonl`), and the vocabulary it needs.

- `hf` (an imported checkpoint): its own template (tokenizer_config.json's chat_template).
- `byte` and `bpe`: ChatML, `<|im_start|>role\\ncontent<|im_end|>\\n` with the generation prompt
  `<|im_start|>assistant\\n` (SmolLM2's and Qwen's format). The two markers become special
  tokens: the tokenizer gains them after its last id when a run first fine-tunes on
  conversations, and the model's embedding and head gain two rows (grown_rows). Typed in a
  completion prompt or a corpus their text stays text, as <|endoftext|>'s does; only the
  template's rendering makes them the tokens (chat_template.ChatFormat.encode).
- `char`: a plain transcript whose markers are characters: `user: ...\\n`, `system: ...\\n` and
  `assistant: ...\\n\\n`; the blank line ends a reply (ChatFormat.end_text: the mask's last
  targets, and serve's stop string). The markers need the characters of "system", "user",
  "assistant", ": " and a newline; a vocabulary without one is refused by name.

`--chat-template FILE` (Jinja, as transformers reads it) replaces the kind's template; byte and
bpe runs gain the two ChatML tokens all the same. Each template wraps what the assistant writes
in transformers' `{% generation %}` block, so that an export's apply_chat_template(...,
return_assistant_tokens_mask=True) marks the tokens blu trains on. A run of blu's own kinds
keeps its template in chat_template.jinja beside tokenizer.json (an hf run in tokenizer.json).
"""

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
import torch

from .chat_template import ChatFormat, ChatTemplateError, compile_template
from .data.chats import read_conversations, validation_choice
from .errors import BluError
from .tokenizers import ByteLevelTokenizer, Tokenizer, build_tokenizer
from .tokenizers.pretrained import PretrainedTokenizer

TEMPLATE_FILE = "chat_template.jinja"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
          "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
          "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
PLAIN = ("{% for message in messages %}{{ message['role'] + ': ' }}{% if message['role'] == 'assistant' %}"
         "{% generation %}{{ message['content'] + '\\n\\n' }}{% endgeneration %}{% else %}"
         "{{ message['content'] + '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}"
         "{% endif %}")


def read_template(path) -> str:
    """The text of --chat-template FILE."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BluError(f"--chat-template {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None


def chat_tokenizer(parent: Tokenizer, template_path=None) -> Tokenizer:
    """The tokenizer of a run fine-tuning on conversations: the parent's with its chat template
    (--chat-template FILE's, the parent's own, or its kind's), and for byte and bpe the ChatML
    tokens it lacks. The parent's tokenizer is left as it was."""
    source = read_template(template_path) if template_path is not None else None
    if parent.kind == "hf":
        child = PretrainedTokenizer.from_dict(json.loads(parent.to_json()))
        if source is None and not child.chat_template:
            raise BluError("this imported run has no chat template to render conversations with: give one with "
                           "--chat-template FILE")
    elif parent.kind == "char":
        child = type(parent).from_dict(json.loads(parent.to_json()))
    else:
        child = with_chatml_tokens(parent)
    child.chat_template = source or parent.chat_template or (PLAIN if parent.kind == "char" else CHATML)
    chat = ChatFormat(child)  # a template that does not compile is refused here
    if parent.kind == "char":
        check_markers(chat, child)
    return child


def scratch_tokenizer(text, seed: int, template_path=None) -> Tokenizer:
    """The tokenizer of a run that learns to chat from scratch (`blu train --data chats.jsonl`,
    no --init-from), of the kind --tokenizer names, built from the training conversations only
    (those the seeded split keeps, as chat_train draws it; all of --data when --val-data holds
    the held-out ones): a char vocabulary from the conversations as the template writes them
    (its markers' characters included), a bpe from the messages' text (the ChatML markers are
    added as tokens by chat_tokenizer, not learned as merges)."""
    conversations = list(read_conversations(text.data, [] if text.skip_bad_files else None))
    if text.val_data is None:
        held = validation_choice(len(conversations), text.val_fraction, seed)
        conversations = [c for c, h in zip(conversations, held) if not h]
    kind = text.tokenizer_kind()
    if kind != "char":
        return build_tokenizer(kind, ("\n".join(m["content"] for m in c) for c in conversations), text.vocab_size)
    template = compile_template(read_template(template_path) if template_path is not None else PLAIN)
    try:
        rendered = [template.render(messages=c, add_generation_prompt=False) for c in conversations]
        rendered.append(template.render(messages=[], add_generation_prompt=True))
    except Exception as error:  # the template's own failure, in one line as ChatFormat gives it
        raise ChatTemplateError(f"the chat template failed: {' '.join(str(error).split())[:200]}") from None
    return build_tokenizer("char", rendered)


def with_chatml_tokens(tokenizer: ByteLevelTokenizer) -> ByteLevelTokenizer:
    """A byte or bpe tokenizer with <|im_start|> and <|im_end|> as special tokens after its last id."""
    hf = HFTokenizer.from_str(tokenizer.to_json())
    if missing := [t for t in (IM_START, IM_END) if hf.token_to_id(t) is None]:
        hf.add_special_tokens(missing)
    return ByteLevelTokenizer(hf)


def check_markers(chat: ChatFormat, tokenizer) -> None:
    """A char template's markers must be characters of the vocabulary, or every conversation
    would train on <unk> where its roles are."""
    probe = [{"role": role, "content": ""} for role in ("system", "user", "assistant")]
    try:
        markers = chat.render(probe, add_generation_prompt=False) + chat.render(probe[:2], add_generation_prompt=True)
    except ChatTemplateError:
        return  # a template that refuses the probe is checked by each conversation's rendering
    if unknown := tokenizer.unknown_chars(markers):
        raise BluError(f"the chat template writes characters this char run's vocabulary lacks: {''.join(unknown)!r} "
                       "(give a template of its own characters with --chat-template FILE)")


def grown_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """An embedding or head matrix with rows added up to `rows`, each the mean of the existing rows
    (as transformers' resize_token_embeddings centres them). Each new token's logit is then the
    mean of the others', so on text that holds none of them the loss rises by at most
    log(1 + added / old rows) nats (Jensen: exp of the mean logit <= the mean of exp)."""
    added = rows - weight.shape[0]
    if added <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(added, -1)], dim=0)
