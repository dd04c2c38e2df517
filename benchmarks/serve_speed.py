"""Tokens per second through `blu serve`'s API (streamed /v1/completions over loopback): one
stream against the library loop that `blu generate` runs, on the same run in the same session,
and the aggregate of 1, 4, 16 and 64 concurrent streams (continuous batching).

    python benchmarks/serve_speed.py [--run runs/NAME] [--tokens 500] [--rounds 3] [--streams 1 4 16 64] [--threads N]
    python benchmarks/serve_speed.py --smoke     # a tiny model, a few tokens: that the script works (seconds)

Without --run, a `seed` preset model with random weights and a char tokenizer is saved in a
temporary run folder (speed does not depend on what the weights learned; a char vocabulary has
no end-of-text token, so every request runs its full length, one character per token). Every
request samples with blu generate's defaults (temperature 0.8, top-p 0.9) and a seed, for at
most --tokens tokens; a run whose texts end at end-of-text is counted by the tokens it made."""

import argparse
from concurrent.futures import ThreadPoolExecutor
import json
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

from common import save, table
import httpx
import torch

import blu
from blu.checkpoint import save_model
from blu.config import Budget, SamplingOptions, TextSettings
from blu.generate import stream_tokens
from blu.model import Transformer
from blu.runs import create_run
from blu.text_stream import TextStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_support import Server  # noqa: E402  (the tests' server process: started, waited for, stopped)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
PROMPT = "ROMEO:"
CONTROLS = dict(temperature=0.8, top_p=0.9)
SMOKE_MODEL = dict(dim=32, n_layer=2, n_head=4, n_kv_head=4, hidden_dim=64, context=32)


def random_run(folder: Path, smoke: bool) -> Path:
    overrides = SMOKE_MODEL if smoke else None
    run = create_run(folder / "random", TextSettings(data=str(SHAKESPEARE), tokenizer="char"), preset="seed",
                     overrides=overrides, budget=Budget(iters=1), device="cpu", log=lambda message: None)
    torch.manual_seed(0)
    save_model(run.folder / "model.safetensors", Transformer(run.model_config))
    return run.folder


def stream_tokens_served(url: str, tokens: int, seed: int) -> int:
    """One streamed completion to the end; the tokens it generated (its usage chunk)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}, **CONTROLS}
    generated = None
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                generated = usage["completion_tokens"]
    assert generated is not None and 0 < generated <= tokens, (generated, tokens)
    return generated


def aggregate(url: str, streams: int, tokens: int) -> float:
    """Tokens per second of `streams` requests started together, first start to last end."""
    with ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        total = sum(pool.map(lambda i: stream_tokens_served(url, tokens, i), range(streams)))
        elapsed = time.perf_counter() - start
    return total / elapsed


def library_rate(local, tokens: int) -> float:
    """Tokens per second of `blu generate`'s loop: sampled tokens into their text, as
    TextGenerator.generate turns them, until the text ends."""
    start = time.perf_counter()
    text = TextStream(local.tokenizer, max_tokens=tokens)
    generator = torch.Generator().manual_seed(0)
    for token in stream_tokens(local.model, local.tokenizer.encode(PROMPT), tokens, SamplingOptions(**CONTROLS),
                               generator, local.tokenizer.unk_id):
        text.feed(token)
        if text.reason:
            break
    return text.tokens / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: a random seed-preset model)")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each measurement (the median is kept)")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 4, 16, 64], help="concurrent streams")
    parser.add_argument("--threads", type=int, help="torch threads of the library loop and of the server (OMP_NUM_THREADS; "
                        "default: torch's own choice); on a busy machine 1 thread is far steadier")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 20 tokens, 1 round, 1 and 4 streams; "
                        "prints its figures without saving them")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.rounds, args.streams = 20, 1, [1, 4]
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process inherits it

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run) if args.run else random_run(Path(tmp), args.smoke)
        local = blu.load(folder)
        with Server(folder, "--max-batch", str(max(args.streams)), log=Path(tmp) / "serve.log") as server:
            stream_tokens_served(server.url, 10, 0)  # warm up both
            library_rate(local, 10)
            rows = [{"measure": "1 stream, library loop (what blu generate runs)",
                     "tokens/s": statistics.median(library_rate(local, args.tokens) for _ in range(args.rounds))},
                    {"measure": "1 stream, through the API",
                     "tokens/s": statistics.median(aggregate(server.url, 1, args.tokens) for _ in range(args.rounds))}]
            for streams in args.streams:
                rate = statistics.median(aggregate(server.url, streams, args.tokens) for _ in range(args.rounds))
                rows.append({"measure": f"{streams} concurrent streams, aggregate", "tokens/s": rate})
    print(table(rows))
    results = {"run": str(args.run or "random seed preset, char tokenizer"), "tokens": args.tokens, "rounds": args.rounds,
               "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows}
    print(f"saved {save('serve_speed', results, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
