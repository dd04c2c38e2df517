"""Prompt tokens per second scored by `blu serve` (echo with logprobs, lm-evaluation-harness's
loglikelihood request: max_tokens 1, logprobs 1, temperature 0), against blu's own whole-split
evaluation forward (`blu eval`'s, blu.evaluate.evaluate) on the same tokens, in the same session.

    python benchmarks/score_speed.py [--run runs/NAME] [--prompts 256] [--chars 100] [--rounds 3] [--threads N]
    python benchmarks/score_speed.py --smoke     # a tiny model, a few prompts: that the script works (seconds)

The prompts are --prompts slices of tiny Shakespeare of about --chars characters (lengths vary
by up to a fifth). Without --run, a `cpu` preset model (context 128, so a prompt fits one window,
as blu eval's windows do) with random weights and a char tokenizer is saved in a temporary run
folder: speed does not depend on what the weights learned. Measured, each the median of --rounds:
the reference forward; the library's batched scoring (blu.score.score_tokens); and through the
API: every prompt in one request, 8 requests of an eighth each at once, one prompt per request
with 32 at once, and one prompt per request one after the other (what batching saves)."""

import argparse
from concurrent.futures import ThreadPoolExecutor
import os
from pathlib import Path
import random
import statistics
import sys
import tempfile
import time

from common import save, shakespeare, table
import httpx
import numpy as np
import torch

import blu
from blu.checkpoint import save_model
from blu.config import Budget, TextSettings
from blu.evaluate import evaluate
from blu.model import Transformer
from blu.runs import create_run
from blu.score import score_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_support import Server  # noqa: E402  (the tests' server process: started, waited for, stopped)

SMOKE_MODEL = dict(dim=32, n_layer=2, n_head=4, n_kv_head=4, hidden_dim=64, context=32)


def random_run(folder: Path, smoke: bool) -> Path:
    run = create_run(folder / "random", TextSettings(data=str(shakespeare()), tokenizer="char"), preset="cpu",
                     overrides=SMOKE_MODEL if smoke else None, budget=Budget(iters=1), device="cpu", log=lambda m: None)
    torch.manual_seed(0)
    save_model(run.folder / "model.safetensors", Transformer(run.model_config))
    return run.folder


def prompts_of(tokenizer, count: int, chars: int, context: int) -> list[list[int]]:
    """`count` slices of tiny Shakespeare of chars +- chars/10 tokens (at most the context), as ids."""
    text, rng = shakespeare().read_text(encoding="utf-8"), random.Random(0)
    ids = tokenizer.encode(text[: 2_000_000])
    out = []
    for _ in range(count):
        length = min(context, rng.randint(chars - chars // 10, chars + chars // 10))
        start = rng.randrange(0, len(ids) - length)
        out.append(ids[start : start + length])
    return out


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# One client, kept as lm-evaluation-harness keeps its session: a new connection per request costs more than scoring
CLIENT = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))


def request(url: str, prompts: list[list[int]]) -> None:
    body = {"prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0, "seed": 1234}
    answer = CLIENT.post(url + "/v1/completions", json=body)
    answer.raise_for_status()
    choices = answer.json()["choices"]
    assert len(choices) == len(prompts) and all(len(c["logprobs"]["token_logprobs"]) == len(p) + 1
                                                for c, p in zip(choices, prompts))


def together(url: str, groups: list[list[list[int]]], clients: int) -> None:
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda group: request(url, group), groups))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: a random cpu-preset model, char tokenizer)")
    parser.add_argument("--prompts", type=int, default=256, help="prompts scored")
    parser.add_argument("--chars", type=int, default=100, help="about how many tokens each prompt has")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each measurement (the median is kept)")
    parser.add_argument("--threads", type=int, help="torch threads here and in the server (OMP_NUM_THREADS; default: "
                        "torch's own choice)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 16 prompts of 20 tokens, 1 round; "
                        "prints its figures without saving them")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.chars, args.rounds = 16, 20, 1
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process inherits it

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run) if args.run else random_run(Path(tmp), args.smoke)
        local = blu.load(folder)
        prompts = prompts_of(local.tokenizer, args.prompts, args.chars, local.model.config.context)
        tokens = sum(len(p) for p in prompts)
        joined = np.array([t for p in prompts for t in p], dtype=np.int64)
        eighth = max(1, len(prompts) // 8)
        with Server(folder, log=Path(tmp) / "serve.log") as server:
            url = server.url
            request(url, prompts[:4])  # warm up both
            evaluate(local.model, joined[:1000])
            measures = [
                ("blu eval's forward on the same tokens (the reference)", lambda: evaluate(local.model, joined)),
                ("library: blu.score.score_tokens, every prompt at once", lambda: score_tokens(local.model, prompts, 1)),
                ("API: every prompt in one request", lambda: request(url, prompts)),
                ("API: 8 requests of an eighth each, at once",
                 lambda: together(url, [prompts[i : i + eighth] for i in range(0, len(prompts), eighth)], 8)),
                ("API: one prompt per request, 32 at once", lambda: together(url, [[p] for p in prompts], 32)),
                ("API: one prompt per request, one after the other", lambda: together(url, [[p] for p in prompts], 1)),
            ]
            rows = []
            for name, function in measures:
                seconds = statistics.median(timed(function) for _ in range(args.rounds))
                rows.append({"measure": name, "prompt tokens/s": tokens / seconds})
    reference = rows[0]["prompt tokens/s"]
    for row in rows:
        row["x reference"] = row["prompt tokens/s"] / reference
    print(table(rows))
    results = {"run": str(args.run or "random cpu preset, char tokenizer"), "prompts": args.prompts, "tokens": tokens,
               "rounds": args.rounds, "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows}
    print(f"saved {save('score_speed', results, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
