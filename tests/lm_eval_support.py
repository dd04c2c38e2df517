"""Helpers for the lm-evaluation-harness tests (not a test module): small local tasks written
into a temporary folder (a JSON lines dataset and a task YAML each, as the harness's guide to
new tasks has them; nothing is downloaded) and `lm_eval` run as a user runs it, its logged
samples read back by task and document."""

import json
import os
from pathlib import Path
import subprocess
import sys


def task_yaml(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            + body)


def multiple_choice(folder: Path, docs: list[dict]) -> None:
    """Task `blu_mc`: docs of {"question", "choices", "answer"}, scored by accuracy; the choice
    follows the question with nothing between (target_delimiter '')."""
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tasks" / "mc.yaml").write_text(task_yaml("blu_mc", folder / "mc.jsonl", (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")))


def perplexity(folder: Path, texts: list[str]) -> None:
    """Task `blu_ppl` (loglikelihood_rolling): each text's total log-likelihood, word perplexity
    and bits per byte."""
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "tasks" / "ppl.yaml").write_text(task_yaml("blu_ppl", folder / "texts.jsonl", (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")))


def generation(folder: Path, docs: list[dict], max_gen_toks: int = 12) -> None:
    """Task `blu_gen` (generate_until): greedy, stopped at a newline, scored by exact match."""
    (folder / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tasks" / "gen.yaml").write_text(task_yaml("blu_gen", folder / "gen.jsonl", (
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        f"generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n  temperature: 0\n"
        "metric_list:\n  - metric: exact_match\n")))


def task_folder(folder: Path) -> Path:
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    return folder


def run_lm_eval(folder: Path, model: str, model_args: str, tasks: list[str], *extra: str) -> dict:
    """`lm_eval --model MODEL --model_args ARGS --tasks ... --log_samples` on the tasks written
    in `folder`, offline; {"results": per task, TASK: its samples sorted by doc_id}."""
    out = folder / f"out-{model}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf"),
           "HF_DATASETS_CACHE": str(folder / "hf" / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", ",".join(tasks),
               "--include_path", str(folder / "tasks"), "--batch_size", "4", "--output_path", str(out), "--log_samples",
               *extra]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    found = {"results": json.loads(next(out.rglob("results_*.json")).read_text())["results"]}
    for task in tasks:
        lines = next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
        found[task] = sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])
    return found
