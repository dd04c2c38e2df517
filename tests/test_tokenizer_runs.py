"""Every tokenizer through the whole tool: training, bits per byte, generation, export to
transformers, reusing a tokenizer, and run folders written before tokenizers were a choice."""

import json
from pathlib import Path
import shutil

from conftest import TINY_MODEL_FLAGS
import pytest
import torch

import blu
from blu.config import SamplingOptions
from blu.generate import stream_tokens
from blu.runs import load_config
from blu.text_stream import TextStream
from blu.tokenizers.bytelevel import END_OF_TEXT

OLD_RUN = Path(__file__).parent / "data" / "run_before_tokenizers"
HARD_CASES = ["emoji 🙂👩‍👩‍👧 and CJK 日本語", "combining e\u0301", "CRLF\r\nand\ttabs", "\ufeffBOM",
              f"the literal {END_OF_TEXT} is text"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """A tiny run for each tokenizer on the same 39,905 characters, whose validation part (the last
    3,990) holds a character the training part has not: "§"."""
    from blu.cli import main

    folder = tmp_path_factory.mktemp("runs")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare.read_text(encoding="utf-8")[:39_000] + "§" * 5 + "\nthe end\n" * 100, encoding="utf-8")
    flags = ["--dim", "32", "--n-layer", "1", "--n-head", "2", "--hidden-dim", "64", "--context", "32", "--batch-size", "8",
             "--iters", "12", "--eval-every", "6", "--data", str(corpus)]
    made = {}
    for kind, extra in (("char", []), ("byte", []), ("bpe", ["--vocab-size", "300"])):
        made[kind] = folder / kind
        assert main(["train", *flags, "--out", str(made[kind]), "--tokenizer", kind, *extra]) == 0
    return made


def test_every_tokenizer_scores_the_same_validation_text(runs):
    """Runs of every tokenizer on one corpus record the same validation text, so their bits per byte
    compare; each reads back its own kind."""
    validation = {kind: json.loads((run / "config.json").read_text())["data"]["validation"] for kind, run in runs.items()}
    assert len({json.dumps(v, sort_keys=True) for v in validation.values()}) == 1
    assert {kind: load_config(run)[3].kind for kind, run in runs.items()} == {k: k for k in runs}


def validation_of(run: Path) -> str:
    data = json.loads((run / "config.json").read_text())["data"]
    return Path(data["path"]).read_text(encoding="utf-8")[data["validation"]["from_char"]:]


def test_eval_reports_bits_per_byte_bytes_window_and_unknown_characters(runs, cli):
    """val_bpb sums the loss over the bytes of the target tokens (every token but the first);
    an unknown character counts its own bytes; the end-of-text token counts none."""
    results = {}
    for kind, run in runs.items():
        code, out, _ = cli("eval", "--run", run, "--json")
        assert code == 0
        results[kind] = json.loads(out)
    validation = validation_of(runs["char"])
    assert "§" in validation and len(validation) == 3990
    target_bytes = len(validation.encode("utf-8")) - 1  # the text begins with an ASCII character
    assert results["char"]["bytes"] == results["byte"]["bytes"] == target_bytes
    assert results["char"]["tokens"] == 3990 - 1 and results["char"]["unknown_chars"] == 5
    assert results["byte"]["tokens"] == len(validation.encode("utf-8"))  # the bytes after the first, then end-of-text
    assert 0 < results["bpe"]["bytes"] <= target_bytes and results["bpe"]["tokens"] < results["byte"]["tokens"]
    assert results["byte"]["unknown_chars"] == results["bpe"]["unknown_chars"] == 0
    assert all(r["window"] == 32 and 0 < r["val_bpb"] < 9 for r in results.values())
    assert "val_bpc" in results["char"] and "val_bpc" not in results["bpe"]


def test_char_bits_per_byte_equal_bits_per_character_on_ascii(runs, cli, tmp_path):
    """On ASCII text a char run's bits per byte equal its bits per character: the byte count is right."""
    ascii_text = tmp_path / "ascii.txt"
    ascii_text.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    code, out, _ = cli("eval", "--run", runs["char"], "--data", ascii_text, "--json")
    result = json.loads(out)
    assert code == 0 and result["val_bpb"] == pytest.approx(result["val_bpc"], rel=1e-12)


def test_char_vocabulary_comes_from_the_training_text_only(runs):
    """A char vocabulary is built from the training text only: a character seen only in validation
    stays unknown."""
    tokenizer = load_config(runs["char"])[3]
    data = json.loads((runs["char"] / "config.json").read_text())["data"]
    text = Path(data["path"]).read_text(encoding="utf-8")
    assert set(tokenizer.chars) == set(text[: data["validation"]["from_char"]]) and "§" not in tokenizer.chars


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_streamed_text_is_the_decoded_tokens_whatever_their_bytes(runs, kind):
    """Pieces of streamed text join into exactly the decoding of all the tokens generated: a
    character whose bytes span tokens is never split (nor turned into U+FFFD) by streaming."""
    run = blu.load(runs[kind])
    options = SamplingOptions(temperature=1.5, top_p=1.0)  # hot, so that bytes come in odd orders
    prompt = run.tokenizer.encode("ROMEO: 日本 🙂")
    tokens = list(stream_tokens(run.model, prompt, 300, options, torch.Generator().manual_seed(0)))
    pieces = list(run.generate("ROMEO: 日本 🙂", 300, seed=0, stop_at_end=False, temperature=1.5, top_p=1.0))
    assert "".join(pieces) == run.tokenizer.decode(tokens)
    assert any(len(run.tokenizer.token_bytes[t]) == 1 and run.tokenizer.token_bytes[t][0] >= 0x80 for t in tokens)
    assert run.generate_many("KING:", 3, 20, seed=1) == run.generate_many("KING:", 3, 20, seed=1)


def test_generation_stops_at_the_end_of_text_token(runs):
    """Generation ends at the end-of-text token (never printed) unless told not to stop there."""
    run = blu.load(runs["byte"])
    end = run.tokenizer.end_id
    tokens = [ord("h"), ord("i"), end, ord("x")]
    assert "".join(map(TextStream(run.tokenizer).feed, tokens)) == "hi"
    assert "".join(map(TextStream(run.tokenizer, end_ids=()).feed, tokens)) == "hix"  # stop_at_end=False


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_export_to_transformers_encodes_decodes_and_continues_as_blu(runs, tmp_path, cli, kind):
    """An hf export of a byte or bpe run tokenizes and decodes hard text as blu does, knows its end-of-
    text token, and continues greedily as blu."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert cli("export", "--run", runs[kind], "--format", "hf", "--out", out)[0] == 0
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    run = blu.load(runs[kind])
    for text in [validation_of(runs[kind]), *HARD_CASES]:
        ids = theirs(text).input_ids
        assert ids == run.tokenizer.encode(text) and theirs.decode(ids) == text
    assert theirs.eos_token == END_OF_TEXT and theirs.eos_token_id == run.tokenizer.end_id
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = theirs("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=20, do_sample=False)
    ours = list(stream_tokens(run.model, run.tokenizer.encode("ROMEO:"), 20, SamplingOptions(temperature=0)))
    theirs_ids = generated[0, prompt.shape[1]:].tolist()  # transformers stops at the end-of-text token
    assert theirs_ids == ours[: len(theirs_ids)] and (len(theirs_ids) == 20 or ours[len(theirs_ids) - 1] == run.tokenizer.end_id)


def test_tokenizer_from_another_run_is_reused(runs, tmp_path, cli, small_corpus, tiny_flags):
    """--tokenizer-from reuses another run's tokenizer.json as it is; beside --tokenizer, or with
    --resume, it is refused in one line."""
    out = tmp_path / "again"
    code, _, err = cli("train", "--data", small_corpus, "--out", out, "--iters", 2, *TINY_MODEL_FLAGS,  # no --tokenizer
                       "--tokenizer-from", runs["bpe"])
    assert code == 0, err
    assert (out / "tokenizer.json").read_text() == (runs["bpe"] / "tokenizer.json").read_text()
    code, _, err = cli("train", "--data", small_corpus, "--out", tmp_path / "x", "--iters", 2, "--tokenizer-from",
                       runs["bpe"], "--tokenizer", "char")
    assert code == 2 and "--tokenizer-from reuses a tokenizer" in err
    code, _, err = cli("train", "--out", out, "--resume", "--tokenizer", "byte")
    assert code == 2 and "not --tokenizer" in err


def test_a_run_folder_from_before_tokenizers_loads_generates_evaluates_exports_and_resumes(tmp_path, cli):
    """Run folders written by blu before tokenizers were a choice (this one by the commit before)
    keep working; its corpus is put back where its config.json says the text was."""
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    config = json.loads((run / "config.json").read_text())
    corpus = tmp_path / "old_corpus.txt"
    corpus.write_text(Path(__file__).resolve().parents[1].joinpath("..", "shared", "data", "tinyshakespeare.txt")
                      .read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    (run / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "path": str(corpus)}}))
    code, out, _ = cli("generate", "--run", run, "--prompt", "ROMEO:", "--max-new-tokens", 20, "--seed", 0)
    assert code == 0 and out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 20 + 1
    code, out, _ = cli("eval", "--run", run, "--json")
    assert code == 0 and json.loads(out)["tokens"] == 3000 - 1 and json.loads(out)["tokenizer"] == "char"
    assert cli("export", "--run", run, "--format", "hf", "--out", tmp_path / "hf")[0] == 0
    code, _, err = cli("train", "--out", run, "--resume", "--iters", 6)
    assert code == 0, err
