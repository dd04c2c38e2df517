"""A large corpus through blu: `blu prepare` timed and its resident memory sampled (the
process and its workers together) in each phase (reading and splitting the corpus, building
the tokenizer, tokenizing), then optionally `blu train` on it, its resident memory at two
steps. Each tokenizer starts from an empty cache folder.

    python benchmarks/corpus_speed.py --data /tmp/docs100 --tokenizers char byte bpe:4096
    python benchmarks/corpus_speed.py --data /tmp/text1g --tokenizers bpe:1024 --train-steps 100 2000 \
        --train-flags "--dim 64 --n-layer 2 --n-head 4 --hidden-dim 192"
    python benchmarks/corpus_speed.py --smoke   # a JSONL folder of 60,000 characters, char and bpe:300, 10 steps

Build the corpora with build_corpus.py (real text, nothing repeated).
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time

from common import SMOKE_HELP, TINY_MODEL, save, shakespeare, table

PHASES = (("read", "blu: read "), ("tokenizer", "blu: built a bpe"), ("tokenize", "blu: tokenized"))


def tree_pss_mb(root: int) -> float:
    """Memory of process `root` and every process below it, in MB: the sum of their
    proportional set sizes (each page shared by n processes counted 1/n in each, so that
    forked workers sharing their parent's pages are not counted twice; for one process
    this is its resident memory)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children.get(pid, [])
    return total / 1e6


def watched(command, env, every: float = 0.1):
    """Run `command`: (stderr lines with their time, RSS samples (time, MB), exit code, seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines, samples = [], []

    def read():
        for line in process.stderr:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    while process.poll() is None:
        samples.append((time.perf_counter() - start, tree_pss_mb(process.pid)))
        time.sleep(every)
    reader.join()
    return lines, samples, process.returncode, time.perf_counter() - start


def prepare(data: str, tokenizer: str, workers: int | None, cache: Path) -> dict:
    kind, _, size = tokenizer.partition(":")
    command = [sys.executable, "-m", "blu", "prepare", "--data", data, "--tokenizer", kind]
    command += (["--vocab-size", size] if size else []) + (["--workers", str(workers)] if workers else [])
    lines, samples, code, seconds = watched(command, {**os.environ, "BLU_CACHE": cache})
    if code:
        raise SystemExit("\n".join(line for _, line in lines))
    [index_path] = Path(cache).glob("tokens/*/*/index.json")
    index = json.loads(index_path.read_text())
    plan = json.loads(next(Path(cache).glob("tokens/*/corpus.json")).read_text())
    ends, previous, row = {}, 0.0, {"tokenizer": tokenizer}
    for name, prefix in PHASES:
        ends[name] = next((t for t, line in lines if line.startswith(prefix)), None)
    for name, _ in PHASES:
        if ends[name] is None:
            continue
        row[f"{name}_peak_mb"] = max((mb for t, mb in samples if previous <= t <= ends[name]), default=0.0)
        previous = ends[name]
    tokens = index["train_tokens"] + index["validation"]["tokens"]
    row.update(text_mb=index["text_bytes"] / 1e6, read_s=plan["scan_s"], tokenize_s=index["seconds"],
               tokenize_mb_s=index["text_bytes"] / 1e6 / index["seconds"], bytes_per_token=index["text_bytes"] / tokens,
               workers=index["workers"], total_s=seconds, tokens=tokens)
    if ends["tokenizer"] is not None:
        row["tokenizer_s"] = ends["tokenizer"] - ends["read"]
    return row


def train(data: str, tokenizer: str, steps: list[int], cache: Path, flags: list[str]) -> dict:
    """Resident memory of `blu train` (reading the shards `prepare` left in `cache`) when it logs
    each of `steps` (it logs every 10 steps). Its one evaluation comes 10 steps after the last,
    so that no sample holds an evaluation's buffers."""
    kind, _, size = tokenizer.partition(":")
    run = cache / "run"
    command = [sys.executable, "-m", "blu", "train", "--data", data, "--tokenizer", kind, "--out", str(run),
               "--iters", str(max(steps)), "--eval-every", str(max(steps)), *flags] + (["--vocab-size", size] if size else [])
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env={**os.environ, "BLU_CACHE": str(cache)})
    found, start = {}, time.perf_counter()
    while process.poll() is None and len(found) < len(steps):
        try:
            logged = {json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()}
        except (OSError, ValueError):
            logged = set()
        for step in steps:
            if step in logged and step not in found:
                found[step] = tree_pss_mb(process.pid)
        time.sleep(0.2)
    process.wait()
    return {"tokenizer": tokenizer, **{f"rss_mb_step_{s}": found.get(s) for s in steps},
            "seconds": time.perf_counter() - start}


def smoke_corpus(folder: Path) -> Path:
    """A folder of two JSONL files holding the first 60,000 characters of tiny Shakespeare as 20 documents."""
    text, corpus = shakespeare().read_text(encoding="utf-8")[:60_000], folder / "corpus"
    corpus.mkdir()
    for part in range(2):
        with open(corpus / f"part-{part}.jsonl", "w", encoding="utf-8") as f:
            for i in range(10):
                f.write(json.dumps({"text": text[(part * 10 + i) * 3000 : (part * 10 + i + 1) * 3000]}) + "\n")
    return corpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--tokenizers", nargs="+", default=["char", "byte", "bpe:4096"], help="KIND or bpe:VOCAB")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--train-steps", type=int, nargs="*", help="also train, and sample memory at these steps")
    parser.add_argument("--train-tokenizers", nargs="*", help="train with these of --tokenizers (default: all)")
    parser.add_argument("--train-flags", default="", help="more blu train flags, e.g. a smaller model")
    parser.add_argument("--name", default="corpus_speed")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if not (args.data or args.smoke):
        parser.error("--data is required (or --smoke)")
    with tempfile.TemporaryDirectory() as base:
        if args.smoke:
            args.data, args.tokenizers = str(smoke_corpus(Path(base))), ["char", "bpe:300"]
            args.train_steps, args.train_tokenizers, args.train_flags = [10], ["bpe:300"], " ".join(TINY_MODEL)
        caches = {tokenizer: Path(base) / tokenizer.replace(":", "-") for tokenizer in args.tokenizers}
        rows = [prepare(args.data, tokenizer, args.workers, caches[tokenizer]) for tokenizer in args.tokenizers]
        keys = {key: None for row in rows for key in row}
        rows = [{**keys, **row} for row in rows]
        print(table(rows))
        results = {"data": args.data, "prepare": rows}
        if args.train_steps:
            results["train"] = [train(args.data, t, args.train_steps, caches[t], args.train_flags.split())
                                for t in args.train_tokenizers or args.tokenizers]
            print(table(results["train"]))
    print("wrote", save(args.name, results, args.smoke))


if __name__ == "__main__":
    main()
