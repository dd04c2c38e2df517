"""`blu train --init-from PARENT`: a new run from another run's weights and tokenizer (a blu run or
an imported one), with its own optimizer state, budget and folder, and config.json saying where it
came from."""

import hashlib
import json

from conftest import assert_same_saved_state, ctrl_c_at_step
from pretrained_support import smollm_style_tokenizer, write_llama_folder
import pytest
import torch

from blu.config import Budget, TextSettings
from blu.errors import BluError
from blu.metrics import MetricsLog
from blu.runs import create_run, load_run, resume_run
from blu.train import train

CPU = torch.device("cpu")


def quiet(message):
    pass


@pytest.fixture(scope="module")
def texts(tmp_path_factory, shakespeare):
    """The parent's text and a new one (another part of tiny Shakespeare)."""
    folder = tmp_path_factory.mktemp("texts")
    text = shakespeare.read_text(encoding="utf-8")
    (folder / "old.txt").write_text(text[:60_000], encoding="utf-8")
    (folder / "new.txt").write_text(text[-60_000:], encoding="utf-8")
    return folder / "old.txt", folder / "new.txt"


@pytest.fixture(scope="module")
def parent(tmp_path_factory, texts, make_run):
    """A small blu run trained for 40 steps: the parent of the fine-tunes below."""
    run = make_run(tmp_path_factory.mktemp("parent") / "parent", texts[0], iters=40, eval_every=40)
    train(run, CPU, log=quiet)
    return run.folder


def test_step_zero_is_blu_eval_of_the_parent_on_the_same_text(tmp_path, cli, parent, texts):
    """Guards against a fine-tune that starts from other weights than the parent's (fresh ones, a
    resumed state's, a shape-mismatched load), or scores another validation text than the parent is
    scored on; and against config.json losing where the run came from."""
    child = tmp_path / "child"
    code, _, err = cli("train", "--init-from", parent, "--data", texts[1], "--out", child, "--iters", 10, "--eval-every", 5)
    assert code == 0, err
    evals = [r for r in MetricsLog(child).rows() if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    code, out, err = cli("eval", "--run", parent, "--data", child, "--json")
    assert code == 0, err
    assert json.loads(out)["val_loss"] == pytest.approx(evals[0]["val_loss"], abs=1e-6)
    assert json.loads(out)["val_bpb"] == pytest.approx(evals[0]["val_bpb"], abs=1e-6)

    meta = json.loads((child / "config.json").read_text())
    expected = hashlib.sha256((parent / "model.safetensors").read_bytes()).hexdigest()
    assert meta["init_from"] == {"path": str(parent.resolve()), "weights_sha256": expected}
    assert meta["train"]["optimizer"] == "muon" and meta["train"]["iters"] == 10  # the fine-tuning defaults, its budget
    assert (child / "tokenizer.json").read_text() == (parent / "tokenizer.json").read_text()
    parent_model = json.loads((parent / "config.json").read_text())["model"]
    assert meta["model"] == parent_model


@pytest.mark.parametrize("flags, message", [
    (["--dim", "64"], "--dim 64 would change the shape"),
    (["--n-layer", "3"], "--n-layer 3 would change the shape"),
    (["--n-kv-head", "4"], "--n-kv-head 4 would change the shape"),
    (["--tie-embeddings"], "--tie-embeddings True would change the shape"),
    (["--context", "64"], "--context 64 is longer than the parent's 32"),
    (["--tokenizer", "byte"], "takes the parent's tokenizer"),
    (["--preset", "seed"], "without --preset"),
])
def test_flags_that_would_change_the_model_are_refused(tmp_path, cli, parent, texts, flags, message):
    """Guards against a fine-tune silently dropping or reshaping the parent's weights: one line, exit 2, nothing written."""
    code, _, err = cli("train", "--init-from", parent, "--data", texts[1], "--out", tmp_path / "child", *flags)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "child").exists()


def test_a_shorter_context_and_dropout_are_allowed(tmp_path, cli, parent, texts):
    """Guards against refusing what keeps the weights' shapes (the context sets none)."""
    child = tmp_path / "child"
    code, _, err = cli("train", "--init-from", parent, "--data", texts[1], "--out", child, "--iters", 2,
                       "--context", 16, "--dropout", 0.1)
    assert code == 0, err
    assert json.loads((child / "config.json").read_text())["model"]["context"] == 16


def child_run(folder, parent, new_text, **overrides):
    return create_run(folder, TextSettings(data=str(new_text)), overrides={"eval_every": 15, "log_every": 5,
                      "batch_size": 8, **overrides}, budget=Budget(30), device="cpu", init_from=parent)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_fine_tune_resumes_exactly(tmp_path, parent, texts, optimizer):
    """A fine-tune stopped by Ctrl-C and resumed ends with the same weights, optimizer and RNG state
    as one that never stopped: guards against a resume that starts from the parent's weights again
    or evaluates step 0 a second time."""
    straight = child_run(tmp_path / "straight", parent, texts[1], optimizer=optimizer)
    train(straight, CPU, log=quiet)

    stopped = child_run(tmp_path / "stopped", parent, texts[1], optimizer=optimizer)
    state, interrupted = train(stopped, CPU, log=ctrl_c_at_step(15))
    assert interrupted and state.step == 15
    state, interrupted = train(resume_run(stopped.folder), CPU, log=quiet)
    assert state.step == 30 and not interrupted
    assert_same_saved_state(straight.folder, stopped.folder)
    steps = [r["step"] for r in MetricsLog(stopped.folder).rows() if "val_loss" in r]
    assert steps == [0, 15, 30]


def test_a_parent_changed_before_the_first_save_is_refused(tmp_path, parent, texts):
    """Guards against a run stopped before its first save starting again from other weights than
    the ones config.json records."""
    copy = tmp_path / "parent"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (copy / name).write_bytes((parent / name).read_bytes())
    run = child_run(tmp_path / "child", copy, texts[1])
    _, model, _ = load_run(copy)
    with torch.no_grad():
        model.output.weight.add_(1.0)
    from blu.checkpoint import save_model

    save_model(copy / "model.safetensors", model)
    with pytest.raises(BluError, match="has changed since this run was created"):
        train(resume_run(run.folder), CPU, log=quiet)


def test_an_imported_model_fine_tuned_then_exported_generates_like_transformers(tmp_path, cli, shakespeare, texts):
    """A short fine-tune of an imported Hugging Face model lowers its validation loss, and its HF
    export gives transformers' greedy text equal to blu's: guards against weights or tokenizer
    settings lost between the import, the fine-tune and the export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = smollm_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:200_000])
    write_llama_folder(tmp_path / "hf", tokenizer, "smollm", seed=5)
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("train", "--init-from", tmp_path / "run", "--data", texts[1], "--out", tmp_path / "tuned",
                       "--iters", 30, "--eval-every", 15, "--lr", 1e-3)
    assert code == 0, err
    evals = [r["val_loss"] for r in MetricsLog(tmp_path / "tuned").rows() if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.5, evals  # random weights learn the new text's tokens quickly
    assert cli("export", "--run", tmp_path / "tuned", "--out", tmp_path / "out")[0] == 0

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    theirs = AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = "KING RICHARD III:\n"
    ids = theirs(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == load_run(tmp_path / "tuned")[2].encode(prompt)
    stops = [0, 2]  # generation_config.json's eos ids, as the import keeps them
    out = reference.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=stops, pad_token_id=0)[0, ids.shape[1]:]
    ended = [i for i, t in enumerate(out.tolist()) if t in stops]
    expected = theirs.decode(out[: ended[0]] if ended else out)
    code, text, err = cli("generate", "--run", tmp_path / "tuned", "--prompt", prompt, "--max-new-tokens", 30,
                          "--temperature", 0)
    assert code == 0, err
    assert text == prompt + expected + "\n"
