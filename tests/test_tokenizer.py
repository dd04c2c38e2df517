import numpy as np
import pytest

from blu.errors import BluError
from blu.tokenizer import CharTokenizer, build_tokenizer, tokenizer_from_json


def test_round_trip_and_vocabulary():
    text = "Hello, wörld!\nÜber 🙂 tab\there"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text)) + 1  # + <unk>
    assert tok.decode(tok.encode(text)) == text
    ids, unknown = tok.encode_array(text)
    assert unknown == 0 and ids.tolist() == tok.encode(text)
    assert ids.dtype == np.uint8


def test_unknown_characters_become_unk_and_are_counted():
    tok = CharTokenizer.from_text("abc")
    ids, unknown = tok.encode_array("abxc€")
    assert ids.tolist() == [1, 2, 0, 3, 0]
    assert unknown == 2
    assert tok.unknown_chars("abxc€") == ["x", "€"]
    assert tok.decode([1, 0, 2]) == "ab"  # <unk> decodes to nothing


def test_json_round_trip():
    tok = CharTokenizer.from_text("the quick brown fox\n")
    again = tokenizer_from_json(tok.to_json())
    assert again.chars == tok.chars and again.encode("fox") == tok.encode("fox")


def test_large_vocabulary_uses_wider_ids():
    tok = CharTokenizer.from_text("".join(chr(0x4E00 + i) for i in range(300)))
    assert tok.dtype == np.uint16
    text = chr(0x4E00 + 299) + chr(0x4E00)
    assert tok.decode(tok.encode_array(text)[0].tolist()) == text


def test_tokenizer_json_chooses_the_kind_and_refuses_others():
    tok = build_tokenizer("char", "héllo\n")
    again = tokenizer_from_json(tok.to_json())
    assert isinstance(again, CharTokenizer) and again.kind == "char" and again.encode("hé") == tok.encode("hé")
    for bad in ('{"type": "wordpiece"}', "[1, 2]", "{not json", '{"type": "char"}'):
        with pytest.raises(BluError):
            tokenizer_from_json(bad)
    with pytest.raises(BluError, match="tokenizer must be one of"):
        build_tokenizer("sentencepiece", "text")


def test_streamed_decoding_gives_the_text_piece_by_piece():
    tok = build_tokenizer("char", "Über 🙂\n")
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in tok.encode("🙂 Über")] + [decoder.flush()]
    assert pieces == ["🙂", " ", "Ü", "b", "e", "r", ""]
    assert tok.unk_id == 0 and tok.start_ids() == tok.encode("\n")
