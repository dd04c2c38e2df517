"""A GGUF file's tokenizer (`tokenizer.ggml.*`) rebuilt as a `tokenizers` file that gives
llama.cpp's ids.

- `gpt2` (byte-level BPE): the tokens, the merges, and the pre-tokenizer llama.cpp names
  (tokenizers/llama_cpp.py); a name it does not know is refused.
- `llama` (SentencePiece-style BPE, as Llama 2, TinyLlama and llama2.c's stories models): no
  merges are stored, only a score per token. llama.cpp puts `▁` for every space (and one before
  the text, unless `add_space_prefix` is false), then joins pieces by the tokens' scores
  (tokenizers/llama_cpp.py's `sentencepiece_merges`: a BPE's merges) and spells what no token
  covers as its `<0xNN>` byte tokens: a BPE with byte fallback, built so here.
Control and unknown tokens become special tokens (text never makes them, blu's policy), user
defined ones plain added tokens (text always makes them, as in llama.cpp).
"""

import json
from pathlib import Path

import gguf
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

from ..errors import BluError
from ..tokenizers.llama_cpp import PRE_TOKENIZERS, pre_tokenizer, sentencepiece_merges, sentencepiece_text_steps
from ..tokenizers.pretrained import PretrainedTokenizer

T = gguf.TokenType


def gguf_tokenizer(path: Path, meta: dict) -> PretrainedTokenizer:
    """The tokenizer of a GGUF file's metadata, or a one-line refusal."""
    model = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens", []))
    types = list(meta.get("tokenizer.ggml.token_type", [T.NORMAL] * len(tokens)))
    if model == "gpt2":
        built = _byte_level(path, meta, tokens)
    elif model == "llama":
        built = _sentencepiece(path, meta, tokens, types)
    else:
        raise BluError(f"{path}: tokenizer.ggml.model = {model!r} is not supported (gpt2 and llama are)")
    special = {i for i, kind in enumerate(types) if kind in (T.CONTROL, T.UNKNOWN)}
    for index, kind in enumerate(types):  # in id order, so that each keeps its id
        if index in special or kind == T.USER_DEFINED:
            token = AddedToken(tokens[index], special=index in special, normalized=False)
            if built.add_special_tokens([token]) != 1 or built.token_to_id(tokens[index]) != index:
                raise BluError(f"{path}: the special token {tokens[index]!r} (id {index}) cannot keep its id")
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    stops = [i for i in (eos, meta.get("tokenizer.ggml.eot_token_id")) if i is not None]
    add_bos = meta.get("tokenizer.ggml.add_bos_token", model == "llama")  # llama.cpp's default for each model
    return PretrainedTokenizer(json.loads(built.to_str()), None if bos is None else int(bos), bool(add_bos) and bos is not None,
                               None if eos is None else int(eos), [int(i) for i in stops], meta.get("tokenizer.chat_template"))


def _byte_level(path: Path, meta: dict, tokens: list[str]) -> HFTokenizer:
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise BluError(f"{path}: tokenizer.ggml.pre = {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}  # special tokens too, as Hugging Face files have them: they keep their ids
    # A merge whose result is no token cannot apply (blu writes one such, export/gguf_vocab's INERT_MERGE).
    built = HFTokenizer(models.BPE(vocab=vocab, merges=[m for m in merges if len(m) == 2 and m[0] + m[1] in vocab]))
    built.pre_tokenizer = pre_tokenizer(pre)
    built.decoder = decoders.ByteLevel()
    return built


def _sentencepiece(path: Path, meta: dict, tokens: list[str], types: list) -> HFTokenizer:
    scores = list(meta.get("tokenizer.ggml.scores", []))
    if len(scores) != len(tokens):
        raise BluError(f"{path}: tokenizer.ggml.scores has {len(scores)} values for {len(tokens)} tokens")
    if meta.get("tokenizer.ggml.merges"):
        raise BluError(f"{path}: a llama (SentencePiece) tokenizer with merges is not supported")
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    built = HFTokenizer(models.BPE(vocab=vocab, merges=sentencepiece_merges(tokens, scores),
                                   unk_token=None if unk is None else tokens[int(unk)],
                                   byte_fallback=T.BYTE in types, fuse_unk=True))
    built.normalizer, built.decoder = sentencepiece_text_steps(bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    return built
