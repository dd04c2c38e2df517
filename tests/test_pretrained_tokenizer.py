"""The `hf` tokenizer kind: a pretrained checkpoint's own tokenizer.json, used exactly, against
transformers' own tokenizers on text that trips tokenizers up."""

import json

from pretrained_support import llama_style_tokenizer, smollm_style_tokenizer, write_tokenizer_folder
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from blu.errors import BluError
from blu.tokenizers import tokenizer_from_json
from blu.tokenizers.pretrained import PretrainedTokenizer

HARD_TEXTS = ["Hello world", " leading space", "  two  spaces", "emoji 😀🎉 and CJK 日本語の文章", "e\u0301 combining",
              "a\r\nb\tc\n\n", "\ufeffa BOM", "<|endoftext|> typed <s> </s> <|im_start|>user", "ünïcödé ß", "", "x",
              "tab\tend\t", "12345 + 678 = 7023"]


@pytest.fixture(scope="module", params=["smollm", "llama"])
def folder(request, tmp_path_factory, shakespeare):
    text = shakespeare.read_text(encoding="utf-8")[:200_000]
    make = smollm_style_tokenizer if request.param == "smollm" else llama_style_tokenizer
    return write_tokenizer_folder(tmp_path_factory.mktemp(request.param), make(text), request.param)


def reference(folder):
    """The tokenizer.json as its own pipeline says, through transformers. (For the Llama style,
    transformers 5's LlamaTokenizer swaps the file's normalizer for a Metaspace pre-tokenizer that
    treats a leading space differently; the file, like SentencePiece, is what the model saw.)"""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if config["tokenizer_class"] == "LlamaTokenizer":
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                       split_special_tokens=True)
    return AutoTokenizer.from_pretrained(folder, split_special_tokens=True)


def test_ids_equal_transformers_on_hard_text(folder, shakespeare):
    """Guards against any difference from the checkpoint's own ids (BOS, spaces, bytes, specials typed as text)."""
    ours, theirs = PretrainedTokenizer.from_folder(folder), reference(folder)
    for text in HARD_TEXTS + [shakespeare.read_text(encoding="utf-8")[200_000:203_000]]:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text)["input_ids"], skip_special_tokens=True)


def test_the_settings_come_from_the_config_files(folder):
    """Guards against a lost BOS rule, end-of-text or stop id from tokenizer_config / generation_config."""
    ours = PretrainedTokenizer.from_folder(folder)
    if folder.name.startswith("llama"):
        assert (ours.bos_id, ours.add_bos, ours.end_id, ours.stop_ids) == (1, True, 2, [2])
        assert ours.encode("hi")[0] == 1 and ours.start_ids() == [1]
    else:
        assert (ours.bos_id, ours.add_bos, ours.end_id, ours.stop_ids) == (0, False, 0, [0, 2])
        assert ours.chat_template.startswith("{% for m in messages %}")


def test_bytes_per_token_add_up_to_the_text(folder):
    """Guards against bits per byte counted over bytes the text does not hold (a prepended space, BOS, U+FFFD)."""
    ours = PretrainedTokenizer.from_folder(folder)
    for text in HARD_TEXTS:
        ids = ours.encode_array(text)[0]
        assert ours.byte_lengths(text, ids).sum() == len(text.encode("utf-8")), text


def test_streamed_text_never_splits_a_character(folder):
    """Guards against a byte-fallback or byte-level token streamed as U+FFFD halfway through a character."""
    ours = PretrainedTokenizer.from_folder(folder)
    for text in HARD_TEXTS:
        ids = ours.encode(text)
        decoder, pieces = ours.stream_decoder(), []
        for i in ids:
            pieces.append(decoder.feed(i))
        pieces.append(decoder.flush())
        assert "\ufffd" not in "".join(pieces)
        assert "".join(pieces).lstrip(" ") == ours.decode(ids).lstrip(" ")


def test_the_run_folder_file_gives_back_the_same_tokenizer(folder):
    """Guards against settings or vocabulary lost between import and every later load."""
    ours = PretrainedTokenizer.from_folder(folder)
    again = tokenizer_from_json(ours.to_json())
    assert again.kind == "hf" and again.to_json() == ours.to_json()
    assert again.encode(HARD_TEXTS[3]) == ours.encode(HARD_TEXTS[3])
    assert again.original == json.loads((folder / "tokenizer.json").read_text())


def test_a_tokenizer_whose_bytes_blu_cannot_tell_is_refused(tmp_path):
    """Guards against scoring and streaming with a guessed byte table (WordPiece's ## pieces)."""
    vocab = {"[UNK]": 0, "hel": 1, "##lo": 2, "world": 3}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(BluError, match="cannot tell the bytes of token"):
        PretrainedTokenizer.from_folder(tmp_path)
