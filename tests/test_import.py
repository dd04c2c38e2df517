"""`blu import`: a Hugging Face Llama folder becomes a run folder that every blu command reads,
with the same logits and the same greedy text as transformers gives."""

import json

from pretrained_support import llama_style_tokenizer, smollm_style_tokenizer, write_llama_folder
import pytest
import torch
from transformers import LlamaForCausalLM

from blu.runs import load_run


@pytest.fixture(scope="module")
def tokenizers(shakespeare):
    text = shakespeare.read_text(encoding="utf-8")[:200_000]
    return {"smollm": smollm_style_tokenizer(text), "llama": llama_style_tokenizer(text)}


@pytest.mark.parametrize("style", ["smollm", "llama"])
def test_an_imported_model_gives_transformers_logits(tmp_path, cli, tokenizers, style):
    """Guards against a weight renamed, fused in the wrong order, or a setting (GQA, ties, rope_theta, eps) lost."""
    reference = write_llama_folder(tmp_path / "hf", tokenizers[style], style)
    code, _, err = cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")
    assert code == 0, err
    _, model, tokenizer = load_run(tmp_path / "run")
    ids = torch.tensor([tokenizer.encode("ROMEO: But soft, what light 😀 through yonder window breaks?")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_greedy_text_equals_transformers_generate(tmp_path, cli, tokenizers):
    """Guards against a BOS, a stop id or a streamed character that differs from the checkpoint's own generation."""
    reference = write_llama_folder(tmp_path / "hf", tokenizers["llama"], "llama", seed=3)
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    _, _, tokenizer = load_run(tmp_path / "run")
    prompt = "JULIET: O Romeo"
    ids = torch.tensor([tokenizer.encode(prompt)])
    expected = reference.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=2, pad_token_id=2)[0, ids.shape[1]:]
    expected = expected[: (expected == 2).nonzero()[0, 0]] if (expected == 2).any() else expected
    code, out, err = cli("generate", "--run", tmp_path / "run", "--prompt", prompt, "--max-new-tokens", 40,
                         "--temperature", 0)
    assert code == 0, err
    assert out == prompt + tokenizer.decode(expected.tolist()) + "\n"  # blu generate ends each text with a newline


def test_sharded_and_pickled_checkpoints_load(tmp_path, cli, tokenizers):
    """Guards against shards or a weights-only pytorch_model.bin read differently from one safetensors file."""
    write_llama_folder(tmp_path / "one", tokenizers["smollm"], "smollm", seed=1)
    write_llama_folder(tmp_path / "shards", tokenizers["smollm"], "smollm", seed=1, sharded=True)
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 1
    pickled = tmp_path / "pickled"
    write_llama_folder(pickled, tokenizers["smollm"], "smollm", seed=1)
    state = LlamaForCausalLM.from_pretrained(pickled).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    weights = []
    for name in ("one", "shards", "pickled"):
        assert cli("import", "--from", tmp_path / name, "--out", tmp_path / f"run-{name}")[0] == 0
        weights.append(load_run(tmp_path / f"run-{name}")[1].state_dict())
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_a_pickle_that_runs_code_is_refused(tmp_path, cli, tokenizers):
    """Guards against executing code from a downloaded checkpoint."""
    folder = tmp_path / "hf"
    write_llama_folder(folder, tokenizers["smollm"], "smollm")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.embed_tokens.weight": Payload()}, folder / "pytorch_model.bin")
    code, _, err = cli("import", "--from", folder, "--out", tmp_path / "run")
    assert code == 2 and "runs no code" in err and not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, message", [
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_scaling"),
    ("attention_bias", True, "attention_bias = True"),
    ("head_dim", 32, "head_dim = 32"),
    ("model_type", "mistral", "model_type 'mistral'"),
    ("hidden_act", "gelu", "hidden_act = 'gelu'"),
])
def test_what_blus_model_cannot_express_is_refused_before_writing(tmp_path, cli, tokenizers, field, value, message):
    """Guards against importing a model whose numbers blu would compute differently, and against a half-written run."""
    folder = tmp_path / "hf"
    write_llama_folder(folder, tokenizers["smollm"], "smollm")
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    if field == "rope_scaling":
        config["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 50000.0}
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli("import", "--from", folder, "--out", tmp_path / "run")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_an_existing_run_is_kept_without_force(tmp_path, cli, tokenizers):
    """Guards against an import overwriting a trained run."""
    write_llama_folder(tmp_path / "hf", tokenizers["smollm"], "smollm")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    code, _, err = cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")
    assert code == 2 and "--force" in err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run", "--force")[0] == 0


def test_the_hf_export_of_an_import_is_the_checkpoint_again(tmp_path, cli, tokenizers):
    """Guards against an imported model leaving blu with other ids, settings or chat template than it came with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = write_llama_folder(tmp_path / "hf", tokenizers["smollm"], "smollm")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("export", "--run", tmp_path / "run", "--out", tmp_path / "out")
    assert code == 0, err
    text = "<|im_start|>user typed as text, 😀 and 日本語"
    ours, theirs = (AutoTokenizer.from_pretrained(tmp_path / f, split_special_tokens=True) for f in ("out", "hf"))
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert ours.chat_template == theirs.chat_template and ours.eos_token == "<|endoftext|>"
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"] == [0, 2]
    ids = torch.tensor([theirs(text)["input_ids"]])
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_eval_of_an_import_needs_a_text(tmp_path, cli, tokenizers, small_corpus):
    """Guards against `blu eval` on an imported run failing with a message about a damaged config."""
    write_llama_folder(tmp_path / "hf", tokenizers["llama"], "llama")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    code, _, err = cli("eval", "--run", tmp_path / "run")
    assert code == 2 and "--data FILE" in err
    code, out, err = cli("eval", "--run", tmp_path / "run", "--data", small_corpus, "--json")
    assert code == 0 and json.loads(out)["bytes"] == len(small_corpus.read_bytes())


def test_generation_stops_at_every_stop_id_of_the_checkpoint(tmp_path, cli, tokenizers):
    """Guards against generation running past an end-of-turn id listed in generation_config.json."""
    from blu.text_stream import TextStream

    write_llama_folder(tmp_path / "hf", tokenizers["smollm"], "smollm")
    assert cli("import", "--from", tmp_path / "hf", "--out", tmp_path / "run")[0] == 0
    _, _, tokenizer = load_run(tmp_path / "run")
    stream = TextStream(tokenizer)
    assert "".join(stream.feed(i) for i in tokenizer.encode("Hi")) == "Hi" and stream.reason is None
    assert stream.feed(2) == "" and stream.reason == "stop"  # <|im_end|>, listed in generation_config.json
