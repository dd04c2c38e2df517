"""Characters per second through `blu serve`'s API (streamed /v1/completions over loopback):
one stream against the library loop that `blu generate` runs, on the same run in the same
session, and the aggregate of 1, 4, 16 and 64 concurrent streams (continuous batching).

    python benchmarks/serve_speed.py [--run runs/NAME] [--tokens 500] [--rounds 3] [--streams 1 4 16 64] [--threads N]

Without --run, a `seed` preset model with random weights is saved in a temporary run folder
(speed does not depend on what the weights learned). Every request samples with blu
generate's defaults (temperature 0.8, top-p 0.9) and a seed, for exactly --tokens characters."""

import argparse
from concurrent.futures import ThreadPoolExecutor
import json
import os
from pathlib import Path
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import save, table
import httpx
import torch

import blu
from blu.checkpoint import save_model
from blu.config import Budget, TextSettings
from blu.model import Transformer
from blu.runs import create_run

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
PROMPT = "ROMEO:"
CONTROLS = dict(temperature=0.8, top_p=0.9)


def random_seed_run(folder: Path) -> Path:
    run = create_run(folder / "seed-random", TextSettings(data=str(SHAKESPEARE)), preset="seed", budget=Budget(iters=1),
                     device="cpu")
    torch.manual_seed(0)
    save_model(run.folder / "model.safetensors", Transformer(run.model_config))
    return run.folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_characters(url: str, tokens: int, seed: int) -> int:
    """One streamed completion to the end; the characters it delivered."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "stream": True, **CONTROLS}
    characters = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                characters += sum(len(c["text"]) for c in json.loads(line[6:])["choices"])
    return characters


def aggregate(url: str, streams: int, tokens: int) -> float:
    """Characters per second of `streams` requests started together, first start to last end."""
    with ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        total = sum(pool.map(lambda i: stream_characters(url, tokens, i), range(streams)))
        elapsed = time.perf_counter() - start
    assert total == streams * tokens, (total, streams * tokens)
    return total / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: a random seed-preset model)")
    parser.add_argument("--tokens", type=int, default=500, help="characters per request")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each measurement (the median is kept)")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 4, 16, 64], help="concurrent streams")
    parser.add_argument("--threads", type=int, help="torch threads of the library loop and of the server (OMP_NUM_THREADS; "
                        "default: torch's own choice); on a busy machine 1 thread is far steadier")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run) if args.run else random_seed_run(Path(tmp))
        local = blu.load(folder)

        def library() -> float:
            start = time.perf_counter()
            text = "".join(local.generate(PROMPT, args.tokens, seed=0, **CONTROLS))
            return len(text) / (time.perf_counter() - start)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "blu", "serve", "--run", str(folder), "--port", str(port),
                                   "--max-batch", str(max(args.streams))], stderr=subprocess.DEVNULL, env=env)
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            stream_characters(url, 50, 0)  # warm up both
            library()
            rows = []
            single_lib = statistics.median(library() for _ in range(args.rounds))
            single_api = statistics.median(aggregate(url, 1, args.tokens) for _ in range(args.rounds))
            rows.append({"measure": "1 stream, library loop (what blu generate runs)", "chars/s": single_lib})
            rows.append({"measure": "1 stream, through the API", "chars/s": single_api})
            for streams in args.streams:
                rate = statistics.median(aggregate(url, streams, args.tokens) for _ in range(args.rounds))
                rows.append({"measure": f"{streams} concurrent streams, aggregate", "chars/s": rate})
        finally:
            server.terminate()
            server.wait(30)
    results = {"run": str(args.run or "random seed preset"), "tokens": args.tokens, "rounds": args.rounds,
               "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows}
    print(table(rows))
    print(f"saved {save('serve_speed', results)}")


if __name__ == "__main__":
    main()
