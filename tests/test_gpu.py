"""CUDA paths (bf16 autocast, fused AdamW, resume onto the GPU): skipped without a GPU."""

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_resume_generate_on_cuda(tmp_path, small_corpus, cli, tiny_flags):
    run = tmp_path / "run"
    assert cli("train", "--data", small_corpus, "--out", run, "--iters", 20, "--device", "cuda", *tiny_flags)[0] == 0
    assert cli("train", "--out", run, "--resume", "--iters", 40, "--device", "cuda")[0] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[-1]["val_loss"] < rows[0]["train_loss"]
    code, out, _ = cli("generate", "--run", run, "--device", "cuda", "--prompt", "ROMEO:", "--max-new-tokens", 50, "--seed", 0)
    assert code == 0 and len(out) == len("ROMEO:") + 50 + 1
