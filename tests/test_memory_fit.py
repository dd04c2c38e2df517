"""What a fine-tune fits into (memory_fit.py) and the evaluation that slices the head's logits:
a 135M parent gets a context and micro-batch that fit in 4 GB, small parents keep the default
batch, a real training step stays under the estimate, and slicing changes no loss."""

from dataclasses import replace
import json
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from blu.config import FINE_TUNE, PRESETS, Budget, ModelConfig
import blu.evaluate as evaluate_module
from blu.fine_tune import fine_tune_configs
from blu.memory_fit import MEMORY_TARGET, fit_fine_tune, training_bytes
from blu.model import Transformer

SMOLLM2_135M = ModelConfig(vocab_size=49152, dim=576, n_layer=30, n_head=9, n_kv_head=3, hidden_dim=1536,
                           context=2048, rope_theta=100000.0, tie_embeddings=True)


def test_a_135m_parent_gets_what_fits_and_keeps_the_steps_sequences():
    """Guards against the default fine-tune of an imported 135M model (16 x 2,048 tokens per
    micro-step, far past 4 GB) coming back, and against accumulation losing the step's sequences."""
    model, train = fine_tune_configs(SMOLLM2_135M, {}, Budget())
    assert (model.context, train.batch_size, train.grad_accum) == (512, 1, 16)
    assert train.batch_size * train.grad_accum == FINE_TUNE.train.batch_size
    assert training_bytes(model, train.optimizer, train.batch_size, model.context) < MEMORY_TARGET


def test_small_parents_and_the_users_flags_are_left_alone():
    """Guards against the fit changing the batch of a parent that fits (every blu preset), or
    overriding the user's --batch-size or --context."""
    for preset in PRESETS.values():
        parent = replace(preset.model, vocab_size=1024)
        assert fit_fine_tune(parent, "muon", 16) == (parent.context, 16, 1)
    model, train = fine_tune_configs(SMOLLM2_135M, {"batch_size": 4, "context": 256}, Budget())
    assert (model.context, train.batch_size, train.grad_accum) == (256, 4, 1)
    model, train = fine_tune_configs(SMOLLM2_135M, {"context": 1024}, Budget())
    assert model.context == 1024 and train.batch_size * train.grad_accum == 16


STEP = """
import json, sys, torch
import torch.nn.functional as F
from blu.config import FINE_TUNE, ModelConfig
from blu.model import Transformer
from blu.optim import make_optimizer
config = ModelConfig(**json.loads(sys.argv[1]))
batch = int(sys.argv[2])
model = Transformer(config)
optimizer = make_optimizer(model, FINE_TUNE.train, torch.device("cpu"))
x = torch.randint(0, config.vocab_size, (batch, config.context))
for _ in range(2):  # the second step has the optimizer's state
    F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print([int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def test_a_real_training_step_stays_under_the_estimate():
    """Guards against the estimate the defaults rest on falling below what a step really takes
    (a real Muon step in a fresh process, its peak resident memory from /proc)."""
    config = ModelConfig(vocab_size=8192, dim=128, n_layer=3, n_head=4, n_kv_head=2, hidden_dim=384, context=512)
    fields = {k: getattr(config, k) for k in ("vocab_size", "dim", "n_layer", "n_head", "n_kv_head", "hidden_dim", "context")}
    out = subprocess.run([sys.executable, "-c", STEP, json.dumps(fields), "4"], capture_output=True, text=True, check=True)
    peak = int(out.stdout.split()[-1])
    assert peak < training_bytes(config, "muon", 4, config.context)


def test_sliced_evaluation_equals_the_plain_forward(monkeypatch):
    """Guards against the slices of positions and of the head's logits dropping, repeating or
    misaligning a target: the loss equals cross-entropy over the model's whole logits."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, dim=32, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=64, context=64))
    tokens = np.random.default_rng(0).integers(0, 300, 64 * 5 + 1 - 17)  # the last window padded
    monkeypatch.setattr(evaluate_module, "EVAL_TOKENS", 128)
    monkeypatch.setattr(evaluate_module, "HEAD_SLICE", 50)
    sliced = evaluate_module.evaluate(model, tokens, batch_size=64).loss
    x = torch.from_numpy(tokens[:-1]).long()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 64][None])[0] for i in range(0, len(x), 64)])
    plain = F.cross_entropy(logits, torch.from_numpy(tokens[1:]).long()).item()
    assert abs(sliced - plain) < 1e-5
