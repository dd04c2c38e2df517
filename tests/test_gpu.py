"""CUDA paths (bf16 autocast, fused AdamW, resume onto the GPU): skipped without a GPU."""

import json

import pytest
import torch

from test_cli import TINY, blu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_resume_generate_on_cuda(tmp_path, small_corpus, capfd):
    run = tmp_path / "run"
    assert blu(capfd, "train", "--data", small_corpus, "--out", run, "--iters", 20, "--device", "cuda", *TINY)[0] == 0
    assert blu(capfd, "train", "--out", run, "--resume", "--iters", 40, "--device", "cuda")[0] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[-1]["val_loss"] < rows[0]["train_loss"]
    code, out, _ = blu(capfd, "generate", "--run", run, "--device", "cuda", "--prompt", "ROMEO:", "--max-new-tokens", 50, "--seed", 0)
    assert code == 0 and len(out) == len("ROMEO:") + 50 + 1
