"""The tokenizer over HTTP, in vLLM's shapes, which lm-evaluation-harness's remote tokenizer reads
(so that it needs no copy of the run's tokenizer):

    POST /tokenize        {"prompt": text, "add_special_tokens": true} -> {"tokens", "count", "max_model_len"}
    POST /detokenize      {"tokens": [ids]} -> {"prompt": text}
    GET  /tokenizer_info  what the tokenizer is: its special ids, the context, the chat template

Special tokens follow the run's policy: their text typed in a prompt stays text (a byte or bpe
run's "<|endoftext|>" is its 13 characters), so no special token is named by its text here:
`eos_token` and `bos_token` are null, and the ids are given instead (`eos_token_id`,
`bos_token_id`, and `start_token_id`, what a text from nothing follows). The harness would
otherwise find the end-of-text id by tokenizing its text, and get the id of "<"; docs/serve.md
says how to give it the id (custom_prefix_token_id). add_special_tokens adds the start-of-text
token only where the run's tokenizer adds one (an imported checkpoint's BOS); blu's own kinds
add none. Characters the vocabulary lacks are given as <unk>, as `blu eval` scores them."""

from .prompts import bad, is_id, token_ids
from .settings import ServerSettings


def tokenize(body: dict, tokenizer, settings: ServerSettings, context: int) -> dict:
    text = body.get("prompt")
    if not isinstance(text, str):
        raise bad("prompt must be a string (chat messages are not tokenized here)", "prompt")
    if len(text) > settings.max_prompt_chars:
        raise bad(f"the prompt is {len(text):,} characters; this server takes at most {settings.max_prompt_chars:,}",
                  "prompt", "prompt_too_long")
    special = body.get("add_special_tokens", True)
    strings = body.get("return_token_strs", False)
    for name, value in (("add_special_tokens", special), ("return_token_strs", strings)):
        if not isinstance(value, bool) and value is not None:
            raise bad(f"{name} must be true or false, got {value!r}", name)
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_id", None)
    if not special and getattr(tokenizer, "add_bos", False) and ids[:1] == [bos]:
        ids = ids[1:]  # encode adds it to every text; without special tokens, the text's own ids
    answer = {"count": len(ids), "max_model_len": context, "tokens": ids}
    if strings:
        answer["token_strs"] = [tokenizer.token_bytes[i].decode("utf-8", errors="replace") for i in ids]
    return answer


def detokenize(body: dict, tokenizer, settings: ServerSettings) -> dict:
    ids = token_ids(body.get("tokens"), "tokens", tokenizer, settings, "tokens")
    return {"prompt": tokenizer.decode(ids)}


def tokenizer_info(tokenizer, context: int) -> dict:
    def special(value):
        return value if is_id(value) else None

    starts = tokenizer.start_ids()
    return {"tokenizer_class": f"blu:{tokenizer.kind}", "eos_token": None, "bos_token": None, "pad_token": None,
            "eos_token_id": special(tokenizer.end_id), "bos_token_id": special(getattr(tokenizer, "bos_id", None)),
            "start_token_id": starts[0] if starts else None, "unk_token_id": special(tokenizer.unk_id),
            "stop_token_ids": list(tokenizer.stop_ids), "vocab_size": tokenizer.vocab_size, "model_max_length": context,
            "chat_template": getattr(tokenizer, "chat_template", None)}
