"""The GPU's precision path, run on this CPU: training, evaluation and generation under bf16
autocast, the way CUDA runs them, so that a dtype bug is found without a GPU.

On CUDA, `device.autocast_for` gives `torch.autocast("cuda", dtype=torch.bfloat16)`, and
training steps and evaluation run their forward inside it; generation (decode.Decoder) runs
in the weights' own dtype, float32, with no autocast. Here every `autocast_for` that blu's
modules hold is replaced by the same autocast for the CPU, so the same code takes the same
casts: bf16 logits out of the model, `.float()` before the loss, float32 weights, gradients
and optimizer moments throughout. The replacement counts its uses, so that a renamed or
bypassed seam fails these tests instead of leaving them to check float32 against float32.

Not covered: torch.compile under autocast (the gpu preset compiles; compiling here takes
most of a minute) and Muon's Newton-Schulz in bf16 (optim.orthogonalize picks bf16 from
`matrix.is_cuda`, which no CPU tensor can take).
"""

from contextlib import nullcontext
import json
import math
import sys

import pytest
from safetensors import safe_open
import torch
import torch.nn.functional as F

import blu.decode
import blu.device
from blu.evaluate import evaluate, stream_eval
from blu.generate import TextGenerator
import blu.sampling
from blu.train import Trainer

CPU = torch.device("cpu")


def blu_modules_holding(value):
    """The loaded blu modules with an attribute that is `value` (the function they imported by name)."""
    return [(module, name) for key, module in list(sys.modules.items()) if key == "blu" or key.startswith("blu.")
            for name, held in list(vars(module).items()) if held is value]


@pytest.fixture
def bf16(monkeypatch):
    """bf16 autocast wherever blu asks `autocast_for` (CUDA's path, taken on the CPU) while
    record["on"]; records the dtype of the logits each sampling call gets and of each KV cache
    made, and of the logits each loss is computed from. Returns the record."""
    record = {"on": True, "autocast": 0, "sampled": [], "caches": [], "scored": []}

    def autocast_for(device):
        if not record["on"]:
            return nullcontext()  # what blu does on a CPU
        record["autocast"] += 1
        return torch.autocast(device.type, dtype=torch.bfloat16)  # as device.autocast_for does for "cuda"

    sample = blu.sampling.sample

    def recorded_sample(logits, *args, **kwargs):
        record["sampled"].append(logits.dtype)
        return sample(logits, *args, **kwargs)

    cross_entropy = F.cross_entropy

    def recorded_cross_entropy(logits, *args, **kwargs):
        record["scored"].append(logits.dtype)
        return cross_entropy(logits, *args, **kwargs)

    cache_init = blu.decode.KVCache.__init__

    def recorded_cache(self, *args, **kwargs):
        cache_init(self, *args, **kwargs)
        record["caches"].append(self.kv.dtype)

    seams = blu_modules_holding(blu.device.autocast_for)
    assert seams, "no blu module holds device.autocast_for: the seam this test replaces has moved"
    for module, name in seams:
        monkeypatch.setattr(module, name, autocast_for)
    for module, name in blu_modules_holding(sample):
        monkeypatch.setattr(module, name, recorded_sample)
    monkeypatch.setattr(blu.decode.KVCache, "__init__", recorded_cache)
    monkeypatch.setattr(F, "cross_entropy", recorded_cross_entropy)  # blu calls it as F.cross_entropy
    return record


def forward_dtypes(model) -> list:
    """The dtype of the logits of each forward, (training?, dtype), recorded from now on: at the
    head, which training's forward and evaluation's sliced one (features, then the head) both call."""
    seen = []
    model.output.register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
    return seen


def float32_tensors(path) -> dict:
    """The dtype of each floating-point tensor in a safetensors file, by name."""
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name).dtype for name in f.keys() if f.get_tensor(name).is_floating_point()}


@pytest.mark.parametrize("optimizer, dropout", [("adamw", 0.0), ("muon", 0.1)])
def test_training_steps_under_bf16_keep_float32_weights_and_learn(tmp_path, small_corpus, make_run, bf16, optimizer, dropout):
    """Guards against a master weight, gradient or optimizer moment left in bf16 by autocast, and a bf16 loss."""
    run = make_run(tmp_path / "run", small_corpus, optimizer=optimizer, dropout=dropout, warmup_iters=0, iters=12)
    trainer = Trainer(run, CPU, log=lambda message: None)
    outputs = forward_dtypes(trainer.model)
    trainer.model.train()
    losses = []
    for _ in range(12):
        agreed = trainer.step(trainer.model)
        assert agreed.finite
        losses.append(agreed.loss_sum.item())
        assert agreed.loss_sum.dtype == torch.float32
    assert bf16["autocast"] == 12
    assert set(outputs) == {(True, torch.bfloat16)}  # the forward really ran under autocast
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert all(p.grad is None for p in trainer.model.parameters())
    moments = [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    assert moments and {v.dtype for v in moments} == {torch.float32}
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses  # ln(vocabulary) ~ 4.2 at the start
    assert bf16["scored"] == [torch.float32] * 12  # the loss of bf16 logits cast to float32 first


def test_evaluation_and_saves_under_bf16_score_and_store_float32(tmp_path, small_corpus, make_run, bf16):
    """Guards against evaluation scoring bf16 logits (no .float() before the loss) and a save writing bf16 weights."""
    run = make_run(tmp_path / "run", small_corpus, iters=6)
    trainer = Trainer(run, CPU, log=lambda message: None)
    trainer.model.train()
    for _ in range(6):
        trainer.step(trainer.model)
    outputs = forward_dtypes(trainer.model)
    entered = bf16["autocast"]
    trainer.evaluate_and_save()  # validation, model.safetensors, a sample, last/
    assert bf16["autocast"] > entered and (False, torch.bfloat16) in outputs
    assert len(bf16["scored"]) > 6 and set(bf16["scored"]) == {torch.float32}
    assert trainer.model.training  # the loop goes on training after an evaluation

    rows = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    [scored] = [r for r in rows if "val_loss" in r]
    assert math.isfinite(scored["val_loss"]) and math.isfinite(scored["val_bpb"])
    # bf16 logits round to about 3 significant digits; the loss over a whole split barely moves.
    bf16["on"] = False
    full = evaluate(trainer.model, run.val_tokens, run.train_config.eval_batch_size, run.val_bytes)
    trainer.model.train()
    assert scored["val_loss"] == pytest.approx(full.loss, rel=0.02) and scored["val_loss"] != full.loss

    saved = float32_tensors(run.folder / "model.safetensors")
    assert saved and set(saved.values()) == {torch.float32}
    state = float32_tensors(run.folder / "last" / "state.safetensors")
    assert any(name.startswith("optimizer.") for name in state) and set(state.values()) == {torch.float32}
    # The sample of the evaluation was generated in float32: logits, cache, and text came out.
    assert bf16["sampled"] and set(bf16["sampled"]) == {torch.float32}
    assert bf16["caches"] == [torch.float32]
    assert "--- step 6" in (run.folder / "samples.txt").read_text()


def test_generation_beside_bf16_training_samples_float32_logits(tmp_path, small_corpus, make_run, bf16):
    """Guards against a bf16 logit reaching sampling or a KV cache of another dtype than the weights' (float32)."""
    run = make_run(tmp_path / "run", small_corpus, iters=4)
    trainer = Trainer(run, CPU, log=lambda message: None)
    trainer.model.train()
    for _ in range(4):
        trainer.step(trainer.model)
    generator = TextGenerator(trainer.model, run.tokenizer)
    text = "".join(generator.generate("ROMEO:", 20, seed=0, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1))
    texts = generator.generate_many("ROMEO:", num_samples=3, max_new_tokens=70, seed=0)  # past the context of 32
    assert text and all(texts)
    assert len(bf16["sampled"]) >= 20 + 70 and set(bf16["sampled"]) == {torch.float32}
    assert bf16["caches"] == [torch.float32, torch.float32]
    rows = stream_eval(trainer.model, run.val_tokens, span=2)  # the loss by position, through the same decoder
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    assert len(bf16["caches"]) > 2 and set(bf16["caches"]) == {torch.float32}
