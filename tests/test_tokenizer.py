from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from blu.errors import BluError
from blu.tokenizers import CharTokenizer, build_tokenizer, tokenizer_from_json


def test_round_trip_and_vocabulary():
    """A char tokenizer holds each character of its text once plus <unk>, decodes what it encodes, and
    uses the narrowest id type."""
    text = "Hello, wörld!\nÜber 🙂 tab\there"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text)) + 1  # + <unk>
    assert tok.decode(tok.encode(text)) == text
    ids, unknown = tok.encode_array(text)
    assert unknown == 0 and ids.tolist() == tok.encode(text)
    assert ids.dtype == np.uint8


def test_unknown_characters_become_unk_and_are_counted():
    """Characters outside the vocabulary become <unk>, are counted and listed, and <unk> decodes to
    nothing."""
    tok = CharTokenizer.from_text("abc")
    ids, unknown = tok.encode_array("abxc€")
    assert ids.tolist() == [1, 2, 0, 3, 0]
    assert unknown == 2
    assert tok.unknown_chars("abxc€") == ["x", "€"]
    assert tok.decode([1, 0, 2]) == "ab"  # <unk> decodes to nothing


def test_json_round_trip():
    """A char tokenizer read back from its tokenizer.json encodes as before."""
    tok = CharTokenizer.from_text("the quick brown fox\n")
    again = tokenizer_from_json(tok.to_json())
    assert again.chars == tok.chars and again.encode("fox") == tok.encode("fox")


def test_large_vocabulary_uses_wider_ids():
    """Over 256 characters, ids are stored as uint16, not wrapped around in uint8."""
    tok = CharTokenizer.from_text("".join(chr(0x4E00 + i) for i in range(300)))
    assert tok.dtype == np.uint16
    text = chr(0x4E00 + 299) + chr(0x4E00)
    assert tok.decode(tok.encode_array(text)[0].tolist()) == text


def test_tokenizer_json_chooses_the_kind_and_refuses_others():
    """tokenizer.json's content chooses the kind; other types, damaged JSON and unknown kinds are
    refused in one line."""
    tok = build_tokenizer("char", "héllo\n")
    again = tokenizer_from_json(tok.to_json())
    assert isinstance(again, CharTokenizer) and again.kind == "char" and again.encode("hé") == tok.encode("hé")
    for bad in ('{"type": "wordpiece"}', "[1, 2]", "{not json", '{"type": "char"}'):
        with pytest.raises(BluError):
            tokenizer_from_json(bad)
    with pytest.raises(BluError, match="tokenizer must be one of"):
        build_tokenizer("sentencepiece", "text")


def test_streamed_decoding_gives_the_text_piece_by_piece():
    """The stream decoder gives each character as its token arrives (emoji and accents included), and
    nothing more at the end."""
    tok = build_tokenizer("char", "Über 🙂\n")
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in tok.encode("🙂 Über")] + [decoder.flush()]
    assert pieces == ["🙂", " ", "Ü", "b", "e", "r", ""]
    assert tok.unk_id == 0 and tok.start_ids() == tok.encode("\n")


HARD_CASES = ["emoji 🙂👩‍👩‍👧 and CJK 日本語のテキスト", "combining e\u0301 a\u0308", "CRLF\r\nand\ttabs\t\t",
              "\ufeffa BOM", "  leading and trailing spaces  ", "the literal <|endoftext|> is text", "x"]


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return build_tokenizer("bpe", shakespeare.read_text(encoding="utf-8")[:200_000], 600)


def test_byte_ids_are_the_utf8_bytes_and_tokenizers_agrees():
    """The byte tokenizer encodes with numpy; the tokenizers file it writes must give the same ids."""
    tok = build_tokenizer("byte", "anything")
    assert tok.kind == "byte" and tok.vocab_size == 257 and tok.end_id == 256
    for text in HARD_CASES:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) == tok.hf.encode(text).ids
        assert tok.decode(ids) == text


def test_bpe_round_trips_and_matches_its_native_file(bpe, tmp_path):
    """tokenizer.json is a native `tokenizers` file: Tokenizer.from_file loads it as it is and
    encodes like blu (once told that special tokens in text are text, as blu is)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(bpe.to_json(), encoding="utf-8")
    native = HFTokenizer.from_file(str(path))
    native.encode_special_tokens = True
    assert bpe.kind == "bpe" and bpe.vocab_size == 600 and bpe.end_id == 599
    for text in HARD_CASES:
        ids = bpe.encode(text)
        assert ids == native.encode(text).ids and bpe.decode(ids) == text
        assert bpe.end_id not in ids  # "<|endoftext|>" written in text is never the token
        assert bpe.byte_lengths(text, np.array(ids)).sum() == len(text.encode("utf-8"))
    assert len(bpe.encode("ROMEO: and the king")) < len("ROMEO: and the king")  # it learned merges


@pytest.mark.parametrize("vocab_size", [300, 4096])
def test_tiktoken_encodes_the_ids_of_tokenizers(shakespeare, vocab_size):
    """blu encodes BPE with tiktoken (5x faster); `tokenizers`, which wrote the merges, must agree."""
    text = shakespeare.read_text(encoding="utf-8")
    tok = build_tokenizer("bpe", text[:900_000], vocab_size)
    assert tok.fast is not None
    for sample in [text, *HARD_CASES, "".join(HARD_CASES), "  \n\n\t x", "x\u00a0y\u2003z \u3000 end  "]:
        assert tok.encode(sample) == tok.hf.encode(sample, add_special_tokens=False).ids


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.text(alphabet=" \t\n\r'sdlvetmAé1日🙂.,-", max_size=80))
def test_tiktoken_agrees_on_any_text(bpe, text):
    """blu's fast BPE encoding gives the ids the Hugging Face tokenizers file gives, on any text: the
    export and llama.cpp read that file."""
    assert bpe.encode(text) == bpe.hf.encode(text, add_special_tokens=False).ids


def test_bpe_training_is_reproducible(shakespeare):
    """Training a BPE twice on the same text gives the same file: the cache and resumed runs rely on
    it."""
    text = shakespeare.read_text(encoding="utf-8")[:100_000]
    assert build_tokenizer("bpe", text, 400).to_json() == build_tokenizer("bpe", text, 400).to_json()


def test_streamed_bytes_never_split_a_character():
    """A character spread over several byte tokens comes out whole, once its last byte arrives."""
    tok = build_tokenizer("byte", "")
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in tok.encode("a🙂é")] + [decoder.flush()]
    assert pieces == ["a", "", "", "", "🙂", "", "é", ""]
    decoder = tok.stream_decoder()
    assert decoder.feed(0xF0) == "" and decoder.flush() == "\ufffd"  # a cut-off character, as decode() shows it


def test_char_byte_lengths_count_utf8_bytes_unknown_characters_included():
    """Bits per byte count each character's UTF-8 bytes, unknown characters included: leaving them out
    would flatter the score."""
    tok = build_tokenizer("char", "abc")
    text = "aé🙂c"
    ids, unknown = tok.encode_array(text)
    assert unknown == 2 and tok.byte_lengths(text, ids).tolist() == [1, 2, 4, 1]


def test_vocab_size_is_for_bpe_only():
    """--vocab-size is refused for char and byte, and a bpe size below 258 is refused before training."""
    with pytest.raises(BluError, match="vocab-size is for --tokenizer bpe"):
        build_tokenizer("char", "abc", 300)
    with pytest.raises(BluError, match="between 258"):
        build_tokenizer("bpe", "abc", 100)
