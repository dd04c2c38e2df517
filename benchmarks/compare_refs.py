"""blu against another version of itself, side by side, for a change that must change neither
speed nor behaviour: batch-1 generation, training and `blu prepare` speed, and the same
weights, text and scores.

    python benchmarks/compare_refs.py --before ../blu-base/src [--after src] [--rounds 5]
    python benchmarks/compare_refs.py --other ../blu-base        # a checkout: its src/ is the before tree
    python benchmarks/compare_refs.py --smoke                      # this tree against itself, tiny, in seconds

Each tree is a folder holding blu/ (a checkout's src/). This script imports no blu itself:
every measurement runs in a fresh process with one tree first on PYTHONPATH (checked), and
each tree has its own empty cache folder, so each tokenizes for itself.

Behaviour. For each tokenizer (char, byte, bpe) each tree trains a run from the same seed:
the weights, tokenizer.json, samples and logged losses must be identical. Then each tree runs
on the before tree's runs `blu generate --temperature 0` (the default prompts, past the
context), `blu generate --num-samples 3 --seed 1` (sampled, batched), `blu eval --json` and
`blu eval --stream --json`: their output must be identical. A tree runs all of this in one
process (blu.cli.main, one command after the other). The exit code is 1 when anything differs.

Speed, in rounds that alternate the trees (before, after, before, after, ...) so that a
machine that gets busier slows both; medians, after/before ratios and every round are printed:
- generation: tokens/s of `blu.load(run).generate(..., temperature=0)` on the before tree's
  char run (the --preset model), timed after a warm-up;
- training: `blu train --preset P --iters N` on --data, tokens/s between the first and last
  logged steps (metrics.jsonl);
- prepare: `blu prepare` of --prepare-data into an empty cache: megabytes of text per second of
  the whole command (its start-up included) and of its tokenizing alone (index.json).
"""

import argparse
from contextlib import redirect_stderr, redirect_stdout
import io
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

from common import SMOKE_HELP, TINY_MODEL, save, shakespeare, small_corpus, table

HERE = Path(__file__).resolve()
KINDS = {"char": ["--tokenizer", "char"], "byte": ["--tokenizer", "byte"], "bpe": ["--tokenizer", "bpe", "--vocab-size", "512"]}

GENERATE = """
import json, sys, time
import blu
assert blu.__file__.startswith(sys.argv[1]), (blu.__file__, sys.argv[1])
model, tokens = blu.load(sys.argv[2]), int(sys.argv[3])
run = lambda: sum(1 for _ in model.generate("ROMEO:", tokens, temperature=0, stop_at_end=False))
run()  # warm-up
start = time.perf_counter(); run(); print(tokens / (time.perf_counter() - start))
"""


def tree_of(path: str) -> Path:
    """The folder holding blu/: `path` itself, or its src/ (a checkout)."""
    path = Path(path).resolve()
    tree = path if (path / "blu").is_dir() else path / "src"
    if not (tree / "blu" / "__init__.py").is_file():
        sys.exit(f"{path} holds no blu/ (nor src/blu/)")
    return tree


def blu(tree: Path, *args, cache: Path, script: bool = False) -> subprocess.CompletedProcess:
    """`python -m blu ARGS` (`script`: `python ARGS`) with `tree` first on PYTHONPATH and `cache` as $BLU_CACHE."""
    command = [sys.executable, *args] if script else [sys.executable, "-m", "blu", *args]
    env = {**os.environ, "PYTHONPATH": str(tree), "BLU_CACHE": str(cache)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed with PYTHONPATH={tree}:\n{done.stderr[-3000:]}")
    return done


# --- behaviour -------------------------------------------------------------------------------

def worker(spec_path: str) -> None:
    """In a process of one tree: run each command of the spec through blu.cli.main, write what each printed."""
    import blu
    from blu.cli import main

    spec = json.loads(Path(spec_path).read_text())
    assert blu.__file__.startswith(spec["tree"]), (blu.__file__, spec["tree"])
    results = []
    for argv in spec["commands"]:
        out, err, start = io.StringIO(), io.StringIO(), time.perf_counter()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-2000:],
                        "seconds": time.perf_counter() - start})
    Path(spec["out"]).write_text(json.dumps(results))


def behaviour_commands(runs: Path, trained: Path, data: Path, args) -> list[list[str]]:
    """Train one run per tokenizer into `runs`, then generate and score with the runs in `trained`."""
    commands = [["train", "--data", str(data), "--out", str(runs / kind), *flags, "--iters", str(args.behaviour_iters),
                 "--eval-every", str(max(1, args.behaviour_iters // 2)), "--preset", args.preset, *args.behaviour_flags]
                for kind, flags in KINDS.items()]
    for kind in KINDS:
        run = str(trained / kind)
        tokens = str(args.behaviour_tokens)
        commands += [["generate", "--run", run, "--temperature", "0", "--max-new-tokens", tokens],
                     ["generate", "--run", run, "--num-samples", "3", "--seed", "1", "--temperature", "0.8",
                      "--top-k", "40", "--max-new-tokens", tokens],
                     ["eval", "--run", run, "--json"], ["eval", "--run", run, "--stream", "--json"]]
    return commands


def run_worker(tree: Path, commands, folder: Path, name: str) -> list[dict]:
    spec, out = folder / f"{name}.spec.json", folder / f"{name}.out.json"
    spec.write_text(json.dumps({"tree": str(tree), "commands": commands, "out": str(out)}))
    blu(tree, str(HERE), "--worker", str(spec), cache=folder / f"{name}-cache", script=True)
    results = json.loads(out.read_text())
    for r in results:
        if r["code"] != 0:
            sys.exit(f"blu {' '.join(r['argv'])} exited {r['code']} with the {name} tree:\n{r['stderr']}")
    return results


def first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"from character {at}: {a[max(0, at - 20):at + 40]!r} against {b[max(0, at - 20):at + 40]!r}"


def losses(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], key): r[key] for r in rows for key in ("train_loss", "val_loss", "val_bpb") if key in r}


def same_run(before: Path, after: Path) -> list[str]:
    """How two runs trained from the same seed differ (nothing: [])."""
    from safetensors.torch import load_file
    import torch

    problems = []
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        problems.append("model.safetensors: different weights")
    for name in ("tokenizer.json", "samples.txt"):
        texts = [(run / name).read_text(encoding="utf-8") for run in (before, after)]
        if texts[0] != texts[1]:
            problems.append(f"{name}: {first_difference(*texts)}")
    if losses(before) != losses(after):
        problems.append("metrics.jsonl: different losses")
    return problems


def behaviour(before: Path, after: Path, data: Path, folder: Path, args) -> list[dict]:
    """Rows (tokenizer, check, result) of every comparison."""
    outputs = {}
    for name, tree in (("before", before), ("after", after)):
        commands = behaviour_commands(folder / name, folder / "before", data, args)
        outputs[name] = run_worker(tree, commands, folder, name)[len(KINDS):]  # what came out of generate and eval
    rows = []
    for kind in KINDS:
        problems = same_run(folder / "before" / kind, folder / "after" / kind)
        rows.append({"tokenizer": kind, "check": "train", "result": "; ".join(problems) or "same"})
    for b, a in zip(outputs["before"], outputs["after"]):
        command, _, run, *flags = b["argv"]  # [command, "--run", run, flags...]
        result = "same" if a["stdout"] == b["stdout"] else first_difference(b["stdout"], a["stdout"])
        rows.append({"tokenizer": Path(run).name, "check": " ".join([command, *flags]), "result": result})
    return rows


# --- speed -----------------------------------------------------------------------------------

def generation(tree: Path, run: Path, tokens: int, cache: Path) -> float:
    return float(blu(tree, "-c", GENERATE, str(tree), str(run), str(tokens), cache=cache, script=True).stdout.strip())


def training(tree: Path, data: Path, args, folder: Path, cache: Path) -> float:
    run = folder / "speed-run"
    blu(tree, "train", "--data", str(data), "--tokenizer", "char", "--out", str(run), "--force", "--preset", args.preset,
        "--iters", str(args.iters), "--eval-every", str(10 * args.iters), *args.behaviour_flags, cache=cache)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train_loss" in r]
    first, last = logged[0], logged[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def preparing(tree: Path, data: Path, flags: list[str], folder: Path) -> tuple[float, float]:
    """(MB/s of the whole `blu prepare`, MB/s of its tokenizing) into an empty cache."""
    with tempfile.TemporaryDirectory(dir=folder) as cache:
        start = time.perf_counter()
        blu(tree, "prepare", "--data", str(data), *flags, cache=Path(cache))
        seconds = time.perf_counter() - start
        [index] = [json.loads(p.read_text()) for p in Path(cache).glob("tokens/*/*/index.json")]
    return index["text_bytes"] / 1e6 / seconds, index["text_bytes"] / 1e6 / max(index["seconds"], 1e-3)


def speed(trees: dict, data: Path, prepare_data: Path, folder: Path, args) -> list[dict]:
    figures = {(name, measure): [] for name in trees for measure in ("generate", "train", "prepare", "tokenize")}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            cache = folder / f"{name}-cache"
            figures[name, "generate"].append(generation(tree, folder / "before" / "char", args.tokens, cache))
            figures[name, "train"].append(training(tree, data, args, folder / name, cache))
            whole, tokenizing = preparing(tree, prepare_data, args.prepare_flags, folder)
            figures[name, "prepare"].append(whole)
            figures[name, "tokenize"].append(tokenizing)
    units = {"generate": "tokens/s", "train": "tokens/s", "prepare": "MB/s (whole command)", "tokenize": "MB/s (tokenizing)"}
    rows = []
    for measure, unit in units.items():
        before, after = figures["before", measure], figures["after", measure]
        rows.append({"measure": f"{measure}, {unit}", "before": statistics.median(before), "after": statistics.median(after),
                     "after / before": statistics.median(after) / statistics.median(before),
                     "rounds before": ", ".join(f"{x:,.2f}" for x in before),
                     "rounds after": ", ".join(f"{x:,.2f}" for x in after)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", "--other", help="the tree (or checkout) to compare against, e.g. the previous main")
    parser.add_argument("--after", default=str(HERE.parents[1] / "src"), help="the changed tree (default: this checkout's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="cpu", help="the model of every run (blu train --preset)")
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens per generation measurement")
    parser.add_argument("--iters", type=int, default=80, help="training steps per training measurement")
    parser.add_argument("--data", default=str(shakespeare()), help="text to train on (default: tiny Shakespeare)")
    parser.add_argument("--prepare-data", help="corpus to prepare (default: --data)")
    parser.add_argument("--prepare-flags", nargs="*", default=["--tokenizer", "bpe"], help="blu prepare's flags")
    parser.add_argument("--behaviour-iters", type=int, default=100, help="training steps of each behaviour run")
    parser.add_argument("--behaviour-tokens", type=int, default=300, help="tokens generated per prompt in the behaviour checks")
    parser.add_argument("--behaviour-flags", nargs="*", default=[], help="more blu train flags for every run (a smaller model)")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; --before defaults to --after")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the process of one tree in `behaviour`
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if not args.before and not args.smoke:
        parser.error("--before (or --other) is required, except with --smoke")
    trees = {"before": tree_of(args.before or args.after), "after": tree_of(args.after)}
    with tempfile.TemporaryDirectory(prefix="compare_refs_") as tmp:
        folder, data = Path(tmp), Path(args.data)
        if args.smoke:
            data = small_corpus(folder)
            args.rounds, args.tokens, args.iters, args.behaviour_iters, args.behaviour_tokens = 1, 20, 20, 10, 40
            args.behaviour_flags = [*TINY_MODEL, *args.behaviour_flags]
            args.prepare_flags = ["--tokenizer", "bpe", "--vocab-size", "300"]
        prepare_data = Path(args.prepare_data) if args.prepare_data else data
        checks = behaviour(trees["before"], trees["after"], data, folder, args)
        rows = speed(trees, data, prepare_data, folder, args)
    print(f"before: {trees['before']}\nafter:  {trees['after']}")
    print(table(checks))
    print(table(rows))
    differ = [c for c in checks if c["result"] != "same"]
    print(f"behaviour: {len(checks) - len(differ)} of {len(checks)} checks the same" + (", SOME DIFFER" if differ else ""))
    print("wrote", save("compare_refs", {"trees": {k: str(v) for k, v in trees.items()}, "behaviour": checks, "speed": rows},
                        args.smoke))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
