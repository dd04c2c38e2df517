"""Every blu tokenizer as llama.cpp's byte-level BPE (tokenizer model `gpt2`, pre-tokenizer
`gpt-2`), and an imported SentencePiece-style one as llama.cpp's `llama` tokenizer, giving the
same token ids as blu on any text its vocabulary covers.

llama.cpp splits text with GPT-2's regex, writes each piece in GPT-2's byte-to-character map,
starts from one symbol per byte, applies the merges in rank order, and looks the resulting
symbols up in the token list (a symbol that is no token is dropped).

- `byte` and `bpe`: blu's tokenizer.json is already that (see bytelevel.py): its tokens in id
  order, its merges as "left right", `<|endoftext|>` a CONTROL token (never made from text), and
  after a chat fine-tune ChatML's `<|im_start|>` and `<|im_end|>` CONTROL tokens too (made from
  text only where the chat template writes them: llama.cpp parses specials in a chat prompt),
  `<|im_end|>` the end of turn (EOT) and the template as tokenizer.chat_template.
- every run with a chat template writes it as tokenizer.chat_template (a char run's plain one
  too, though llama.cpp stops its replies at no string of its own: pass the blank line as a stop).
- `char`: a token per character, written as the byte-level string of its UTF-8 bytes, and for
  each character of more than one byte the merges that build it a byte at a time from its
  first byte. A merge's left side always starts at the first byte of a character and its right
  side is one continuation byte, so merges never join two characters, and the split into
  pieces does not matter: each known character becomes its token whatever surrounds it. A
  character outside the vocabulary ends as symbols that are no token, so llama.cpp drops it,
  as blu drops it from prompts. `<unk>` (id 0) is a CONTROL token.
- `hf` (an imported checkpoint's tokenizer.json): written as it is when it is a byte-level BPE
  with a pre-tokenizer llama.cpp has a name for (pretrained_vocab); its start and end tokens,
  whether it begins texts with the start token, and its chat template go with it.
- `hf` in SentencePiece's style (Llama 2, TinyLlama, llama2.c's stories: `▁` for spaces, byte
  fallback): llama.cpp's `llama` tokenizer keeps a score per token instead of merges
  (tokenizers/llama_cpp.py's `sentencepiece_merges`). Each token a merge makes scores minus the
  rank of the first merge that makes it, so llama.cpp joins pieces in the tokenizer's order when
  the merges are every split of every token into two, in the order of the token they make, as
  transformers' SentencePiece conversion writes them; other merges are refused. Where one token's
  merges are ranked apart (Llama 2's runs of spaces), runs of that token are tokenized both ways
  to check. Llama 2's own vocabulary (llama2.c's tokenizer.model, converted by transformers)
  gave the ids of the file, of llama.cpp reading the export and of SentencePiece alike on 3,819 texts.
"""

from dataclasses import dataclass
import json

import gguf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from ..chat_kinds import IM_END, IM_START
from ..chat_template import ChatFormat
from ..errors import BluError
from ..tokenizers import UNK
from ..tokenizers.bytelevel import END_OF_TEXT, gpt2_byte_map
from ..tokenizers.llama_cpp import (
    PRE_TOKENIZERS,
    pre_tokenizer_name,
    sentencepiece_merges,
    sentencepiece_space_prefix,
    sentencepiece_text_steps,
)
from ..tokenizers.pretrained import SENTENCEPIECE_SPACE

NORMAL, CONTROL, USER_DEFINED = gguf.TokenType.NORMAL, gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED
UNKNOWN, BYTE = gguf.TokenType.UNKNOWN, gguf.TokenType.BYTE
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece's byte-fallback tokens
SPECIALS = (END_OF_TEXT, IM_START, IM_END)  # blu's own special tokens (the ChatML ones a chat fine-tune adds)

# llama.cpp requires a merges list for `gpt2` and gguf's writer cannot write an empty one, so a
# vocabulary with no merges gets this one, which can never apply: no merge builds its left side
# "ĠĠ" (two spaces), and llama.cpp's symbols start as single bytes.
INERT_MERGE = "ĠĠ Ġ"

# Token texts that llama.cpp (src/llama-vocab.cpp, as built by llama-cpp-python 0.3.36) makes
# control or end-of-generation tokens whatever their type, so a NORMAL token spelled so would
# vanish from llama.cpp's text or stop its generation. Only the ASCII ones can be byte-level strings.
LLAMA_CPP_SPECIAL_TEXTS = frozenset({
    "</s>", "<EOT>", "<MID>", "<PAD>", "<PRE>", "<REPO>", "<SUF>", "<end_of_turn>", "<end_of_utterance>", "<eos>",
    "<fim-middle>", "<fim-pad>", "<fim-prefix>", "<fim-repo>", "<fim-suffix>", "<fim_middle>", "<fim_pad>",
    "<fim_prefix>", "<fim_suffix>", "<reponame>", "<turn|>", "<|calls|>", "<|call|>", "<|channel|>",
    "<|code_middle|>", "<|code_prefix|>", "<|code_suffix|>", "<|constrain|>", "<|end_of_text|>", "<|endoftext|>",
    "<|end|>", "<|eom_id|>", "<|eot_id|>", "<|file_sep|>", "<|fim_middle|>", "<|fim_pad|>", "<|fim_prefix|>",
    "<|fim_repo|>", "<|fim_suffix|>", "<|flush|>", "<|im_end|>", "<|message|>", "<|middle|>", "<|prefix|>",
    "<|repo_name|>", "<|return|>", "<|start|>", "<|suffix|>", "<|tool_response>", "[EOS]", "[EOT]", "[PAD]",
    "[e~[", "_<EOT>",
})


@dataclass
class GGUFVocab:
    tokens: list[str]  # in id order
    types: list[gguf.TokenType]
    merges: list[str]  # "left right", in rank order
    bos: int | None  # what blu starts an empty prompt after
    eos: int | None  # where llama.cpp's generation stops
    unk: int | None = None
    pre: str = "gpt-2"  # llama.cpp's pre-tokenizer (tokenizers/llama_cpp.py)
    add_bos: bool = False  # blu trains with no beginning-of-text token; an imported tokenizer says
    eot: int | None = None  # a second id generation stops at (an imported chat model's end of turn)
    chat_template: str | None = None
    scores: list[float] | None = None  # a `llama` (SentencePiece-style) tokenizer's, in place of merges
    space_prefix: bool = True  # `llama` only: a space put before the text

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2" if self.scores is None else "llama")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is None:
            writer.add_token_merges(self.merges or [INERT_MERGE])
        else:
            writer.add_token_scores(self.scores)
            writer.add_add_space_prefix(self.space_prefix)
        for index, add in ((self.bos, writer.add_bos_token_id), (self.eos, writer.add_eos_token_id),
                           (self.unk, writer.add_unk_token_id), (self.eot, writer.add_eot_token_id)):
            if index is not None:
                add(index)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def gguf_vocab(tokenizer) -> GGUFVocab:
    """The GGUF tokenizer of a blu tokenizer; a BluError if llama.cpp could not tokenize as blu does."""
    makers = {"char": char_vocab, "hf": pretrained_vocab}
    vocab = makers.get(tokenizer.kind, byte_level_vocab)(tokenizer)
    if len(set(vocab.tokens)) != len(vocab.tokens):
        raise BluError("the vocabulary has two tokens with the same text, which llama.cpp cannot tell apart")
    for token, kind in zip(vocab.tokens, vocab.types):
        if kind == NORMAL and token in LLAMA_CPP_SPECIAL_TEXTS:
            raise BluError(f"the vocabulary has a token {token!r} that llama.cpp treats as a control token")
    return vocab


def byte_level(data: bytes) -> str:
    """Bytes as GPT-2's byte-level string: each byte as its printable character."""
    byte_map = gpt2_byte_map()
    return "".join(byte_map[b] for b in data)


def char_vocab(tokenizer) -> GGUFVocab:
    tokens, merges = [UNK], {}  # a dict keeps the merges in order, once each
    for char in tokenizer.chars:
        try:
            encoded = char.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            raise BluError(f"the vocabulary holds {ascii(char)}, which has no UTF-8 form that llama.cpp could read") from None
        tokens.append(byte_level(encoded))
        for k in range(1, len(encoded)):  # the first k bytes, then byte k
            merges[f"{byte_level(encoded[:k])} {byte_level(encoded[k : k + 1])}"] = None
    return GGUFVocab(tokens, [CONTROL] + [NORMAL] * len(tokenizer.chars), list(merges),
                     bos=tokenizer.start_ids()[0], eos=tokenizer.unk_id, unk=tokenizer.unk_id,
                     chat_template=tokenizer.chat_template)


def byte_level_vocab(tokenizer) -> GGUFVocab:
    data = json.loads(tokenizer.to_json())
    check_llama_cpp_can_split_as(data)
    tokens = _ordered_tokens(tokenizer.hf)
    types = [CONTROL if t in SPECIALS else NORMAL for t in tokens]
    eot = ChatFormat(tokenizer).end_of_turn if tokenizer.chat_template else None
    return GGUFVocab(tokens, types, _merges(data), bos=tokenizer.start_ids()[0], eos=tokenizer.end_id, eot=eot,
                     chat_template=tokenizer.chat_template)


def check_llama_cpp_can_split_as(data: dict) -> None:
    """Refuse a tokenizer.json whose settings llama.cpp's `gpt-2` tokenizer does not have (blu
    writes none such, but a tokenizer.json may come from elsewhere through --tokenizer-from)."""
    pre, model = data.get("pre_tokenizer") or {}, data["model"]
    differences = {
        "a normalizer": data.get("normalizer") is not None,
        "a pre-tokenizer other than GPT-2's byte-level regex with no prefix space":
            (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")) != ("ByteLevel", False, True),
        "dropout, subword prefixes or suffixes, byte fallback or ignore_merges":
            bool(model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
                 or model.get("byte_fallback") or model.get("ignore_merges")),
        f"special tokens other than {', '.join(SPECIALS)}": any(t["content"] not in SPECIALS or not t.get("special")
                                                             for t in data.get("added_tokens", [])),
    }
    for what, differs in differences.items():
        if differs:
            raise BluError(f"tokenizer.json has {what}, which llama.cpp's gpt-2 tokenizer cannot reproduce")


def _ordered_tokens(hf) -> list[str]:
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise BluError("tokenizer.json's token ids are not 0 to vocab_size - 1 without gaps, which llama.cpp needs")
    return tokens


def _merges(data: dict) -> list[str]:
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    if any(m.count(" ") != 1 for m in merges):
        raise BluError("tokenizer.json has a merge that is not two byte-level tokens, which llama.cpp cannot read")
    return merges


def pretrained_vocab(tokenizer) -> GGUFVocab:
    """An imported byte-level BPE tokenizer.json as llama.cpp's `gpt2` tokenizer with the
    pre-tokenizer it names; anything llama.cpp would tokenize differently is refused by name.
    Special tokens become CONTROL (matched in text only when asked, as blu's policy), other added
    tokens USER_DEFINED (always matched, as `tokenizers` does)."""
    data = tokenizer.original
    model, decoder = data.get("model", {}), data.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return sentencepiece_vocab(tokenizer, data)
    if model.get("type") != "BPE" or [d.get("type") for d in decoders] != ["ByteLevel"]:
        raise BluError("GGUF export of an imported tokenizer needs a byte-level BPE (a BPE model with the ByteLevel "
                       "decoder) or a SentencePiece-style BPE with byte fallback: use --format hf")
    pre = pre_tokenizer_name(data)
    if pre is None:
        raise BluError(f"tokenizer.json's pre-tokenizer is none that llama.cpp names ({', '.join(PRE_TOKENIZERS)}), "
                       "so llama.cpp would split text differently: use --format hf")
    differences = {
        "a normalizer": data.get("normalizer") is not None,
        "dropout, subword prefixes or suffixes or byte fallback":
            bool(model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
                 or model.get("byte_fallback")),
        f"ignore_merges set differently from llama.cpp's {pre}": bool(model.get("ignore_merges")) != (pre == "llama-bpe"),
        "an added token that strips spaces around it": any(t.get("lstrip") or t.get("rstrip")
                                                            for t in data.get("added_tokens", [])),
    }
    for what, differs in differences.items():
        if differs:
            raise BluError(f"tokenizer.json has {what}, which llama.cpp's gpt2 tokenizer cannot reproduce")
    tokens = _ordered_tokens(tokenizer.hf)
    added = {t["id"]: t.get("special", False) for t in data.get("added_tokens", [])}
    types = [(CONTROL if added[i] else USER_DEFINED) if i in added else NORMAL for i in range(len(tokens))]
    return GGUFVocab(tokens, types, _merges(data), pre=pre, **_imported_ids(tokenizer))


def _imported_ids(tokenizer) -> dict:
    """An imported tokenizer's start and stop tokens, whether texts begin with the start token, and its template."""
    others = [i for i in tokenizer.stop_ids if i != tokenizer.end_id]
    if len(others) > 1:
        raise BluError(f"the tokenizer stops at {len(others) + 1} ids; a GGUF file can name two (eos and eot)")
    return dict(bos=tokenizer.bos_id, eos=tokenizer.end_id, add_bos=tokenizer.add_bos, eot=others[0] if others else None,
                chat_template=tokenizer.chat_template)


def sentencepiece_vocab(tokenizer, data: dict) -> GGUFVocab:
    """An imported SentencePiece-style tokenizer.json as llama.cpp's `llama` tokenizer (see the module
    docstring); anything llama.cpp would tokenize differently is refused by name."""
    model = data["model"]
    space_prefix = sentencepiece_space_prefix(data)
    tokens = _ordered_tokens(tokenizer.hf)
    differences = {
        "a normalizer or decoder other than SentencePiece's (spaces as ▁, a space put before the text or not)":
            space_prefix is None,
        "a pre-tokenizer": data.get("pre_tokenizer") is not None,
        "dropout, subword prefixes or suffixes or ignore_merges":
            bool(model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
                 or model.get("ignore_merges")),
        "an added token that strips spaces around it": any(t.get("lstrip") or t.get("rstrip")
                                                            for t in data.get("added_tokens", [])),
        "not all 256 byte-fallback tokens <0x00> to <0xFF>": not set(BYTE_TOKENS) <= set(tokens),
    }
    for what, differs in differences.items():
        if differs:
            raise BluError(f"tokenizer.json has {what}, which llama.cpp's llama tokenizer cannot reproduce")
    merges = [tuple(m.split(" ")) for m in _merges(data)]
    first_rank = {}
    for rank, (left, right) in enumerate(merges):
        first_rank.setdefault(left + right, rank)
    scores = [-float(first_rank.get(token, 0)) for token in tokens]
    llama_cpps = sentencepiece_merges(tokens, scores)
    if set(llama_cpps) != set(merges) or list(dict.fromkeys(a + b for a, b in llama_cpps)) != list(first_rank):
        raise BluError("tokenizer.json's merges are not every split of its tokens into two, in the order of the token "
                       "they make (as SentencePiece conversions write them), so llama.cpp would join pieces otherwise: "
                       "use --format hf")
    _check_split_groups(tokenizer, data, tokens, merges, llama_cpps, space_prefix)
    added = {t["id"]: t.get("special", False) for t in data.get("added_tokens", [])}
    unk = tokenizer.hf.token_to_id(model["unk_token"]) if model.get("unk_token") else None
    bytes_ = set(BYTE_TOKENS)
    types = [UNKNOWN if i == unk else BYTE if token in bytes_ else (CONTROL if added[i] else USER_DEFINED) if i in added
             else NORMAL for i, token in enumerate(tokens)]
    return GGUFVocab(tokens, types, [], unk=unk, pre="default", scores=scores, space_prefix=space_prefix,
                     **_imported_ids(tokenizer))


def _check_split_groups(tokenizer, data, tokens, merges, llama_cpps, space_prefix) -> None:
    """Where the merges making one token are not side by side in rank (Llama 2's runs of spaces,
    which share one score in SentencePiece, are ranked by the length of their left side), llama.cpp
    may join in another order: refuse unless both give the same ids on runs of each such token."""
    ranks = {}
    for rank, (left, right) in enumerate(merges):
        ranks.setdefault(left + right, []).append(rank)
    apart = [token for token, made in ranks.items() if made[-1] - made[0] + 1 != len(made)]
    if not apart:
        return
    model = data["model"]
    llama_cpp = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=llama_cpps,
                                       unk_token=model.get("unk_token"), byte_fallback=True, fuse_unk=True))
    llama_cpp.normalizer, _ = sentencepiece_text_steps(space_prefix)
    for token in apart:
        text = token.replace(SENTENCEPIECE_SPACE, " ")
        for probe in (text, text * 2, text * 3, f"a{text}b", f"{text}a{text}"):
            if llama_cpp.encode(probe).ids != tokenizer.hf.encode(probe, add_special_tokens=False).ids:
                raise BluError(f"tokenizer.json's merges that make {token!r} are ranked apart, and llama.cpp would "
                               f"tokenize {probe!r} otherwise: use --format hf")
