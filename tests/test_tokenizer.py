import numpy as np

from blu.tokenizer import CharTokenizer


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
    again = CharTokenizer.from_json(tok.to_json())
    assert again.chars == tok.chars and again.encode("fox") == tok.encode("fox")


def test_large_vocabulary_uses_wider_ids():
    tok = CharTokenizer.from_text("".join(chr(0x4E00 + i) for i in range(300)))
    assert tok.dtype == np.uint16
    text = chr(0x4E00 + 299) + chr(0x4E00)
    assert tok.decode(tok.encode_array(text)[0].tolist()) == text
