"""GGUF export, checked against llama.cpp itself (through llama-cpp-python): for a char run whose
text holds characters outside ASCII, a byte run and a BPE run, llama.cpp tokenizes as blu, gives
blu's logits and continues a prompt greedily with blu's text; gguf's reader sees what was meant."""

import gc
import json
from pathlib import Path
import random
import re

import numpy as np
import pytest
import torch

import blu
from blu.config import SamplingOptions
from blu.generate import stream_tokens
from blu.tokenizers.bytelevel import END_OF_TEXT

HARD_CASES = ["emoji 🙂👩‍👩‍👧 and CJK 日本語のテキスト", "combining e\u0301 and n\u0303 beside é and ñ",
              "CRLF\r\nand\ttabs\t\tend", "  leading, trailing and   many spaces  ",
              "numbers 1234567 and it's 'quoted' — “curly”", f"the literal {END_OF_TEXT} is text"]
UNSEEN = "§"  # only in the validation text: unknown to the char run
CONTEXT = 32
# (weights, KV cache) -> the largest difference from blu's float32 logits allowed. All f32: 1e-4,
# the bound. The rest (llama.cpp's default f16 cache, rounded weights) are relative to the
# largest |logit| of blu, since rounding errors grow with the logits; measured on these models
# (max |logit| 0.4-0.8; 2026-11-30): f16 cache 8.8e-5, f16 weights 5.0e-4, bf16 3.8e-3, q8_0
# 1.45e-2 (relative), a fifth to a third of each bound.
LOGIT_TOLERANCE = {("f32", "f32"): 1e-4, ("f32", "f16"): 5e-4, ("f16", "f16"): 2e-3, ("bf16", "f16"): 1.5e-2,
                   ("q8_0", "f16"): 5e-2}
GGML_TYPE = {"f32": 0, "f16": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """Tiny runs, one per tokenizer, on Shakespeare with every hard case in its training part and
    "§" in its validation part (the last tenth). Grouped-query attention (n_kv_head 1) and, for
    the byte run, a tied head: both change what the export writes."""
    from blu.cli import main

    folder = tmp_path_factory.mktemp("gguf_runs")
    text = shakespeare.read_text(encoding="utf-8")[:27_000]
    body = "".join(text[i : i + 1000] + HARD_CASES[i // 1000 % len(HARD_CASES)] + "\n" for i in range(0, len(text), 1000))
    corpus = folder / "corpus.txt"
    corpus.write_text(body + ("A line " + UNSEEN + " with an unseen sign.\n" + "\n".join(HARD_CASES) + "\n") * 12,
                      encoding="utf-8")
    flags = ["--dim", "32", "--n-layer", "1", "--n-head", "2", "--n-kv-head", "1", "--hidden-dim", "64",
             "--context", str(CONTEXT), "--batch-size", "8", "--iters", "10", "--eval-every", "10", "--data", str(corpus)]
    made = {}
    for kind, extra in (("char", []), ("byte", ["--tie-embeddings"]), ("bpe", ["--vocab-size", "320"])):
        made[kind] = folder / kind
        assert main(["train", *flags, "--out", str(made[kind]), "--tokenizer", kind, *extra]) == 0
    return made


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """A function giving the GGUF file of (kind, dtype), written once by `blu export`."""
    from blu.cli import main

    folder, files = tmp_path_factory.mktemp("gguf_files"), {}

    def get(kind: str, dtype: str = "f32") -> Path:
        if (kind, dtype) not in files:
            out = folder / f"{kind}-{dtype}.gguf"
            assert main(["export", "--run", str(runs[kind]), "--format", "gguf", "--out", str(out), "--dtype", dtype]) == 0
            files[kind, dtype] = out
        return files[kind, dtype]

    return get


def llama(path: Path, cache: str = "f32", verbose: bool = False):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(str(path), n_ctx=CONTEXT, logits_all=True, n_threads=2, type_k=GGML_TYPE[cache],
                           type_v=GGML_TYPE[cache], verbose=verbose)


def validation_of(run: Path) -> str:
    data = json.loads((run / "config.json").read_text())["data"]
    return Path(data["path"]).read_bytes().decode("utf-8")[data["validation"]["from_char"]:]  # CRLF kept, as blu reads it


def test_metadata_reads_back_in_ggufs_reader(runs, exported):
    """The GGUF's metadata (architecture, shapes, RoPE, norm epsilon, GPT-2 tokenizer) reads back in
    gguf's own reader as the run's."""
    from gguf import GGUFReader

    for kind in runs:
        run = blu.load(runs[kind])
        config, tokenizer = run.model.config, run.tokenizer
        reader = GGUFReader(exported(kind))
        value = {name: field.contents() for name, field in reader.fields.items()}
        assert value["general.architecture"] == "llama" and value["llama.context_length"] == CONTEXT
        assert (value["llama.embedding_length"], value["llama.block_count"], value["llama.feed_forward_length"]) == (32, 1, 64)
        assert (value["llama.attention.head_count"], value["llama.attention.head_count_kv"]) == (2, 1)
        assert value["llama.rope.dimension_count"] == 16 and value["llama.rope.freq_base"] == config.rope_theta
        assert value["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.norm_eps)
        assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
        assert len(value["tokenizer.ggml.tokens"]) == len(value["tokenizer.ggml.token_type"]) == tokenizer.vocab_size
        assert value["tokenizer.ggml.add_bos_token"] is False
        special = tokenizer.unk_id if kind == "char" else tokenizer.end_id
        assert value["tokenizer.ggml.eos_token_id"] == special and value["tokenizer.ggml.token_type"][special] == 3
        names = {t.name for t in reader.tensors}
        assert ("output.weight" in names) == (kind != "byte") and len(names) == 9 + 2 + (kind != "byte")
        assert all(t.tensor_type.name == "F32" for t in reader.tensors)


def expected_ids(tokenizer, text: str) -> list[int]:
    """blu's ids for `text` as a prompt: unknown characters dropped (the char run's `<unk>`)."""
    return [i for i in tokenizer.encode(text) if i != tokenizer.unk_id]


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_llama_cpp_tokenizes_and_detokenizes_as_blu(runs, exported, kind):
    """llama.cpp tokenizes and detokenizes hard text (multi-byte, combining, CR, tab, unseen
    characters) to blu's ids and text, for every kind."""
    llm = llama(exported(kind))
    tokenizer = blu.load(runs[kind]).tokenizer
    validation = validation_of(runs[kind])
    assert UNSEEN in validation and all(case in validation for case in HARD_CASES)
    if kind == "char":  # characters of 2, 3 and 4 bytes, a combining mark, CR and tab are tokens
        assert {"é", "日", "🙂", "\u200d", "\u0301", "\r", "\t"} <= set(tokenizer.chars)
    for text in [validation, *HARD_CASES, UNSEEN + "x" + UNSEEN]:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)  # add_bos: the file says none
        assert ids == expected_ids(tokenizer, text), text
        known = "".join(c for c in text if kind != "char" or c != UNSEEN)
        assert llm.detokenize(ids).decode("utf-8") == known
    if kind == "char":  # llama.cpp drops what the vocabulary lacks, as blu does in prompts
        assert llm.tokenize(UNSEEN.encode(), add_bos=False) == []
    else:  # the literal end-of-text is text; parsed as special it is the end-of-text token
        assert llm.tokenize(END_OF_TEXT.encode(), add_bos=False, special=True) == [tokenizer.end_id]
        assert llm.token_eos() == tokenizer.end_id


# Code points to draw random text from, as llama.cpp's tests/test-tokenizer-random.py does:
# ASCII, Latin, combining marks, kana, CJK, emoji, punctuation, controls, Arabic, private use, astral planes.
RANDOM_POOLS = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x300, 0x370), range(0x3040, 0x3100), range(0x4E00, 0x4F00),
                range(0x1F300, 0x1F650), range(0x2000, 0x2070), range(0x0, 0x20), range(0x600, 0x700), range(0xE000, 0xF900),
                range(0x10000, 0x110000)]


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_llama_cpp_tokenizes_random_text_as_blu(runs, exported, kind):
    """On 1,000 random texts llama.cpp's tokenizer gives blu's ids, for every kind."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(exported(kind)), vocab_only=True, verbose=False)
    tokenizer = blu.load(runs[kind]).tokenizer
    rng = random.Random(0)
    for _ in range(1000):
        text = "".join(chr(rng.choice(rng.choice(RANDOM_POOLS))) if rng.random() < 0.5 else rng.choice(" \n\t'sdtm1e")
                       for _ in range(rng.randint(1, 30)))
        text = "".join(c for c in text if not 0xD800 <= ord(c) < 0xE000)  # no surrogates: not text
        assert llm.tokenize(text.encode("utf-8"), add_bos=False) == expected_ids(tokenizer, text), ascii(text)


def blu_logits(run, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return run.model(torch.tensor([ids]))[0].numpy()


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
@pytest.mark.parametrize("weights,cache", sorted(LOGIT_TOLERANCE))
def test_llama_cpp_logits_equal_blus(runs, exported, kind, weights, cache):
    """llama.cpp's logits equal blu's within each weight and cache type's rounding, and the rounded
    types really do round."""
    run = blu.load(runs[kind])
    ids = expected_ids(run.tokenizer, validation_of(runs[kind]))[:CONTEXT]
    llm = llama(exported(kind, weights), cache)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    ours = blu_logits(run, ids)
    difference = np.abs(theirs - ours).max()
    scale = 1.0 if (weights, cache) == ("f32", "f32") else np.abs(ours).max()
    assert difference <= LOGIT_TOLERANCE[weights, cache] * scale, (difference, scale)
    if (weights, cache) != ("f32", "f32"):
        assert difference > 0  # the rounding did happen: this file is not f32 in disguise


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_llama_cpp_greedy_continuation_is_blus_text(runs, exported, kind):
    """llama.cpp continues a prompt greedily with blu's tokens (with <unk> banned, as blu bans it)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    run = blu.load(runs[kind])
    llm = llama(exported(kind))
    prompt = "ROMEO:\nWhat say you, "
    ids = expected_ids(run.tokenizer, prompt)
    steps = CONTEXT - len(ids)  # to the end of the context: no refill in blu
    # blu never picks <unk> (the char run's, which is the GGUF's end of generation); llama.cpp is told the same
    unk = run.tokenizer.unk_id
    ban = [] if unk is None else [lambda _, scores: np.where(np.arange(len(scores)) == unk, -np.inf, scores)]
    theirs = []
    for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0, logits_processor=llama_cpp.LogitsProcessorList(ban)):
        theirs.append(token)
        if len(theirs) == steps:
            break
    assert theirs == list(stream_tokens(run.model, ids, steps, SamplingOptions(temperature=0), banned=unk))
    text = "".join(run.generate(prompt, steps, temperature=0))  # ends at the end-of-text token
    end = theirs.index(run.tokenizer.end_id) if run.tokenizer.end_id in theirs else steps
    assert llm.detokenize(theirs[:end]).decode("utf-8", errors="replace") == text and text
    if "\ufffd" not in text:  # llama-cpp-python's completions drop bytes that form no character; blu shows U+FFFD
        bias = {} if unk is None else {unk: float("-inf")}
        completion = llm.create_completion(prompt, max_tokens=steps, temperature=0.0, repeat_penalty=1.0, logit_bias=bias)
        assert completion["choices"][0]["text"] == text
        assert completion["choices"][0]["finish_reason"] == ("length" if end == steps else "stop")
    else:
        assert kind != "char"


def test_llama_cpp_loads_without_warnings_about_the_tokenizer(runs, exported, capfd):
    """llama.cpp loads each export without the warnings that mean degraded generation (pre-tokenizer,
    control tokens, newline)."""
    # A verbose Llama makes llama.cpp's log loud for every model until the next one is built, and a
    # model the garbage collector frees later says farewell in whatever test runs then: the earlier
    # tests' models are freed first, in silence, and each one here is freed in this test.
    gc.collect()
    for kind in runs:
        llama(exported(kind, "q8_0"), verbose=True).close()
        log = capfd.readouterr().err
        assert re.search(r"file type\s+= Q8_0", log) and re.search(r"vocab type\s+= BPE", log)  # the log was captured
        tokenizer = blu.load(runs[kind]).tokenizer
        end = tokenizer.unk_id if kind == "char" else tokenizer.end_id
        assert re.search(rf"EOS token\s+= {end} ", log)
        assert "missing pre-tokenizer" not in log and "GENERATION QUALITY WILL BE DEGRADED" not in log
        assert "control-looking token" not in log and "missing newline token" not in log
        # A char run's end of generation is <unk>, which llama.cpp does not know by its text: it says so.
        assert ("special_eos_id is not in special_eog_ids" in log) == (kind == "char")


def test_export_refuses_what_llama_cpp_cannot_hold_in_one_line(runs, exported, cli, tmp_path, small_corpus, tiny_flags):
    """What a GGUF cannot hold (q8_0 rows not a multiple of 32), --dtype for hf and a folder as --out
    are one line, writing nothing."""
    run48 = tmp_path / "dim48"
    flags = [*tiny_flags, "--dim", "48", "--n-head", "4", "--iters", "2"]
    assert cli("train", "--data", small_corpus, "--out", run48, *flags)[0] == 0
    code, _, err = cli("export", "--run", run48, "--format", "gguf", "--out", tmp_path / "m.gguf", "--dtype", "q8_0")
    assert code == 2 and err.count("\n") == 1 and "multiple of 32" in err and "rows of 48" in err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".m.gguf*"))  # nothing half written
    code, _, err = cli("export", "--run", runs["char"], "--format", "hf", "--out", tmp_path / "hf", "--dtype", "f16")
    assert code == 2 and "--dtype is for --format gguf" in err
    code, _, err = cli("export", "--run", runs["char"], "--format", "gguf", "--out", tmp_path, "--dtype", "f16")
    assert code == 2 and "is a folder" in err


def test_a_bpe_vocabulary_llama_cpp_would_read_differently_is_refused(runs):
    """A bpe vocabulary with a token llama.cpp would read as a control token is refused, not exported
    to generate differently."""
    from tokenizers import Tokenizer

    from blu.errors import BluError
    from blu.export.gguf_vocab import gguf_vocab
    from blu.tokenizers import ByteLevelTokenizer

    tokenizer = blu.load(runs["bpe"]).tokenizer
    data = json.loads(tokenizer.to_json())
    vocab = data["model"]["vocab"]
    for token in ("</s>",):  # a NORMAL token spelled like a control token llama.cpp knows
        vocab[token] = len(vocab)
    data["added_tokens"][0]["id"] = len(vocab)
    with pytest.raises(BluError, match="treats as a control token"):
        gguf_vocab(ByteLevelTokenizer(Tokenizer.from_str(json.dumps(data))))
    data = json.loads(tokenizer.to_json())
    data["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(BluError, match="pre-tokenizer other than GPT-2's"):
        gguf_vocab(ByteLevelTokenizer(Tokenizer.from_str(json.dumps(data))))
