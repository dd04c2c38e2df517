"""Conversation data for fine-tuning: the assistant mask as transformers computes it, the lines a
conversation file may not hold, and the loss taken on the assistant's tokens of a whole global batch."""

import json

from pretrained_support import smollm_style_tokenizer, write_tokenizer_folder
import pytest

from blu.chat_mask import conversation_tokens
from blu.chat_template import ChatFormat, ChatTemplateError
from blu.tokenizers.pretrained import PretrainedTokenizer

# ChatML with transformers' {% generation %} blocks around what the assistant writes, its end-of-turn included.
GENERATION = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
              "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATIONS = [
    [{"role": "system", "content": "Speak as Shakespeare would."}, {"role": "user", "content": "Who is Romeo?"},
     {"role": "assistant", "content": "A Montague, in love."}, {"role": "user", "content": "And Juliet? café 😀"},
     {"role": "assistant", "content": " A Capulet,\nhis love. "}],
    [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "O, hi!"}, {"role": "user", "content": "Bye"}],
]


@pytest.fixture(scope="module")
def tokenizer(shakespeare):
    return smollm_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:200_000])


def folder_with(folder, tokenizer, template: str):
    """A tokenizer folder as SmolLM2's, with `template` as its chat template."""
    folder = write_tokenizer_folder(folder, tokenizer, "smollm")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_the_assistant_mask_is_transformers(tmp_path, tokenizer, conversation):
    """Guards against training on the wrong tokens: a user turn or a marker in the loss, an
    assistant token or the end-of-turn token left out, an empty reply or a last user turn mishandled."""
    from transformers import AutoTokenizer

    messages = CONVERSATIONS[conversation]
    folder = folder_with(tmp_path / "tok", tokenizer, GENERATION)
    theirs = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(folder)), messages)
    assert ids == list(theirs["input_ids"])
    assert [int(m) for m in mask] == list(theirs["assistant_masks"])
    assert any(mask)


def test_a_template_without_generation_blocks_gives_the_same_mask(tmp_path, tokenizer):
    """Guards against a mask that needs the template's {% generation %} blocks: plain ChatML
    (what most checkpoints ship) picks out the same tokens."""
    plain = GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for messages in CONVERSATIONS:
        tagged = conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(
            folder_with(tmp_path / "a", tokenizer, GENERATION))), messages)
        assert conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(
            folder_with(tmp_path / "b", tokenizer, plain))), messages) == tagged


def test_a_template_that_rewrites_past_turns_is_refused(tmp_path, tokenizer):
    """Guards against a mask taken from a text the model never sees: a template that writes past
    replies otherwise than the last one (as reasoning templates drop past thoughts) is an error."""
    rewrites = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if loop.last else 'x' }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = ChatFormat(PretrainedTokenizer.from_folder(folder_with(tmp_path / "tok", tokenizer, rewrites)))
    with pytest.raises(ChatTemplateError, match="differently"):
        conversation_tokens(chat, CONVERSATIONS[0])
