"""Tokens per second through `blu serve`'s API (streamed /v1/completions over loopback) beside the
library's own loops on the same run in the same session: one stream against the loop that `blu
generate` runs, and 4, 16 and 64 concurrent streams (continuous batching) against the batched
loop of `blu generate --num-samples N`; optionally the same for another source tree's server.

    python benchmarks/serve_speed.py [--run runs/NAME] [--tokens 500] [--rounds 3] [--streams 4 16 64] [--threads N]
                                     [--before OTHER/src] [--profile]
    python benchmarks/serve_speed.py --smoke     # a tiny model, a few tokens: that the script works (seconds)

Without --run, a `seed` preset model with random weights and a char tokenizer is saved in a
temporary run folder (speed does not depend on what the weights learned; a char vocabulary has
no end-of-text token, so every request runs its full length, one character per token). Every
request samples with blu generate's defaults (temperature 0.8, top-p 0.9) and a seed, for at
most --tokens tokens; a run whose texts end at end-of-text is counted by the tokens it made.

The client reads each stream as raw bytes and parses only its usage chunk: it shares the
machine's cores with the server, and a client that decodes every chunk's JSON (as the openai
client does) would measure itself too. --before serves the same run from another tree (its
src folder, e.g. a checkout of main) in a second server, measured in the same rounds,
alternating with this one. --profile records both threads of this tree's server (the engine
and the event loop) with py-spy (pip install py-spy) during one round of 1 and of the most
streams, and prints where each spends its samples."""

import argparse
from concurrent.futures import ThreadPoolExecutor
import json
import os
from pathlib import Path
import shutil
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
from blu.config import Budget, SamplingOptions, TextSettings
from blu.generate import generation_loop, sampler, stream_tokens
from blu.model import Transformer
from blu.runs import create_run
from blu.text_stream import TextStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_support import Server  # noqa: E402  (the tests' server process: started, waited for, stopped)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
THIS_SRC = Path(blu.__file__).resolve().parents[1]
PROMPT = "ROMEO:"
CONTROLS = dict(temperature=0.8, top_p=0.9)
SMOKE_MODEL = dict(dim=32, n_layer=2, n_head=4, n_kv_head=4, hidden_dim=64, context=32)
IDLE = {"select", "wait", "sleep"}  # a thread whose innermost frame is one of these is waiting


def random_run(folder: Path, smoke: bool) -> Path:
    overrides = SMOKE_MODEL if smoke else None
    run = create_run(folder / "random", TextSettings(data=str(SHAKESPEARE), tokenizer="char"), preset="seed",
                     overrides=overrides, budget=Budget(iters=1), device="cpu", log=lambda message: None)
    torch.manual_seed(0)
    save_model(run.folder / "model.safetensors", Transformer(run.model_config))
    return run.folder


def stream_tokens_served(client: httpx.Client, url: str, tokens: int, seed: int) -> int:
    """One streamed completion to the end; the tokens it generated (its usage chunk, the last
    before [DONE], is the only one parsed)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}, **CONTROLS}
    tail = b""
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            tail = (tail + chunk)[-4096:]
    events = tail.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""], tail[-200:]
    generated = json.loads(events[-3].removeprefix(b"data: "))["usage"]["completion_tokens"]
    assert 0 < generated <= tokens, (generated, tokens)
    return generated


def thread_cpu(pid: int) -> dict[str, float]:
    """Seconds on a CPU so far of a process's threads (Linux schedstat): its main thread, the
    server's event loop, and all the others together (the engine's, and torch's if it has any)."""
    seconds = {"event loop": 0.0, "engine": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # a thread that has just ended
            continue
        seconds["event loop" if int(task.name) == pid else "engine"] += ns / 1e9
    return seconds


def aggregate(clients: list, server: Server, streams: int, tokens: int) -> dict:
    """Tokens per second of `streams` requests started together, first start to last end, and
    the CPU milliseconds per 1,000 tokens of the server's threads and of the client (this process)."""
    cpu, client = thread_cpu(server.process.pid), time.process_time()
    with ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        total = sum(pool.map(lambda i: stream_tokens_served(clients[i], server.url, tokens, i), range(streams)))
        elapsed = time.perf_counter() - start
    used = {**{k: v - cpu[k] for k, v in thread_cpu(server.process.pid).items()}, "client": time.process_time() - client}
    return {"tokens/s": total / elapsed, **{f"{k} ms/1k": v / total * 1e6 for k, v in used.items()}}


def library_rate(local, tokens: int) -> dict:
    """Tokens per second (and CPU ms per 1,000) of `blu generate`'s loop: sampled tokens into
    their text, as TextGenerator.generate turns them, until the text ends."""
    start, cpu = time.perf_counter(), time.thread_time()
    text = TextStream(local.tokenizer, max_tokens=tokens)
    generator = torch.Generator().manual_seed(0)
    for token in stream_tokens(local.model, local.tokenizer.encode(PROMPT), tokens, SamplingOptions(**CONTROLS),
                               generator, local.tokenizer.unk_id):
        text.feed(token)
        if text.reason:
            break
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return {"tokens/s": text.tokens / elapsed, "engine ms/1k": cpu / text.tokens * 1e6}


def library_batch_rate(local, rows: int, tokens: int) -> dict:
    """The same for `blu generate --num-samples ROWS`' loop (TextGenerator.generate_many): the
    rows in one batch, each token into its row's text, until every text has ended."""
    start, cpu = time.perf_counter(), time.thread_time()
    options = SamplingOptions(**CONTROLS)
    texts = [TextStream(local.tokenizer, max_tokens=tokens) for _ in range(rows)]
    prompts = torch.tensor([local.tokenizer.encode(PROMPT)] * rows)
    choose = sampler(options, torch.Generator().manual_seed(0), local.tokenizer.unk_id)
    for step in generation_loop(local.model, prompts, tokens, choose, options.repetition_window):
        for text, token in zip(texts, step.tolist()):
            text.feed(token)
        if all(text.reason for text in texts):
            break
    total = sum(text.tokens for text in texts)
    return {"tokens/s": total / (time.perf_counter() - start), "engine ms/1k": (time.thread_time() - cpu) / total * 1e6}


def profile(server: Server, clients: list, streams: int, tokens: int, out: Path) -> dict:
    """py-spy's samples of every thread of the server during one aggregate of `streams` streams:
    per thread, the share of samples spent waiting and the functions it spends the most in (by
    their own samples, and with what they call)."""
    spy_bin = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy")
    spy = subprocess.Popen([spy_bin, "record", "-p", str(server.process.pid), "--threads", "--idle", "-r", "250", "-f", "raw",
                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.5)  # py-spy attaches
    rate = aggregate(clients, server, streams, tokens)["tokens/s"]
    spy.send_signal(2)
    if spy.wait(60):
        raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode()[-500:]}")
    threads: dict[str, dict] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")  # "thread (ID): NAME", then "function (file:line)" outermost first
        thread = thread.split(": ", 1)[-1]
        frames = [f.rsplit(":", 1)[0] + ")" for f in frames]
        record = threads.setdefault(thread, {"samples": 0, "waiting": 0, "self": {}, "within": {}})
        record["samples"] += int(count)
        if frames[-1].split(" (")[0].rsplit(".", 1)[-1] in IDLE:
            record["waiting"] += int(count)
            continue
        record["self"][frames[-1]] = record["self"].get(frames[-1], 0) + int(count)
        for frame in set(frames):
            if "blu/" in frame:
                record["within"][frame] = record["within"].get(frame, 0) + int(count)
    def shares(counts: dict, total: int) -> dict:
        return {f: round(n / total, 3) for f, n in sorted(counts.items(), key=lambda item: -item[1])[:15]}

    summary = {"streams": streams, "tokens/s while profiled": rate, "threads": {}}
    for thread, record in threads.items():
        total = record["samples"]
        summary["threads"][thread] = {"samples": total, "waiting": round(record["waiting"] / total, 3),
                                      "self": shares(record["self"], total), "within (blu)": shares(record["within"], total)}
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: a random seed-preset model)")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each measurement (the median is kept)")
    parser.add_argument("--streams", type=int, nargs="*", default=[4, 16, 64], help="concurrent streams (besides 1)")
    parser.add_argument("--threads", type=int, help="torch threads of the library loop and of the server (OMP_NUM_THREADS; "
                        "default: torch's own choice); on a busy machine 1 thread is far steadier")
    parser.add_argument("--before", type=Path, help="another tree's src folder, served and measured beside this one")
    parser.add_argument("--flags", default="", help="more `blu serve` flags for this tree's server, e.g. '--stream-interval 0'")
    parser.add_argument("--profile", action="store_true", help="py-spy this tree's server during 1 and the most streams")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 20 tokens, 1 round, 1 and 4 streams, "
                        "this tree as its own --before; prints its figures without saving them")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.rounds, args.streams, args.before = 20, 1, [4], args.before or THIS_SRC
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server processes inherit it
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["after"] = THIS_SRC
    counts = [1] + [n for n in args.streams if n != 1]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run) if args.run else random_run(Path(tmp), args.smoke)
        local = blu.load(folder)
        servers = {name: Server(folder, "--max-batch", str(max(counts)), *(args.flags.split() if name == "after" else []),
                                log=Path(tmp) / f"serve-{name}.log", env={**os.environ, "PYTHONPATH": str(src)})
                   for name, src in trees.items()}
        clients = [httpx.Client() for _ in range(max(counts))]  # made before timing: each costs milliseconds
        try:
            for server in servers.values():  # warm up
                stream_tokens_served(clients[0], server.url, 10, 0)
            library_rate(local, 10)
            measured = {(name, n): [] for name in ["library", *servers] for n in counts}
            for _ in range(args.rounds):  # alternating, so that the machine's load falls on all alike
                for n in counts:
                    measured["library", n].append(library_rate(local, args.tokens) if n == 1 else
                                                  library_batch_rate(local, n, args.tokens))
                    for name, server in servers.items():
                        measured[name, n].append(aggregate(clients, server, n, args.tokens))
            profiles = ([profile(servers["after"], clients, n, args.tokens, Path(tmp) / f"profile-{n}.txt")
                         for n in (1, max(counts))] if args.profile else [])
        finally:
            for server in servers.values():
                server.stop()
    median = {key: {k: statistics.median(m[k] for m in values) for k in values[0]} for key, values in measured.items()}
    rate = {key: m["tokens/s"] for key, m in median.items()}
    rows, cpu_rows = [], []
    for n in counts:
        row = {"streams": n, "library (tokens/s)": rate["library", n]}
        for name in servers:
            row[f"API {name} (tokens/s)"] = rate[name, n]
        for name in servers:
            row[f"{name} / library"] = f"{rate[name, n] / rate['library', n]:.2f}x"
        for name in servers:
            row[f"{name} / its 1 stream"] = f"{rate[name, n] / rate[name, 1]:.2f}x"
        rows.append(row)
        for name in ["library", *servers]:
            cpu_rows.append({"streams": n, "who": name, **{k.replace(" ms/1k", ""): median[name, n].get(k, "")
                                                        for k in ("engine ms/1k", "event loop ms/1k", "client ms/1k")}})
    print(table(rows))
    print("\nCPU milliseconds per 1,000 tokens (medians; 'engine' is every thread but the main one)\n")
    print(table(cpu_rows))
    for summary in profiles:
        print(json.dumps(summary, indent=1))
    results = {"run": str(args.run or "random seed preset, char tokenizer"), "tokens": args.tokens, "rounds": args.rounds,
               "threads": torch.get_num_threads(), "trees": {name: str(src) for name, src in trees.items()}, "flags": args.flags,
               "load_average": os.getloadavg(), "rows": rows, "cpu_rows": cpu_rows,
               "all_rounds": {f"{k[0]} {k[1]}": v for k, v in measured.items()}, "profiles": profiles}
    print(f"saved {save('serve_speed', results, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
