"""lm-evaluation-harness itself (`lm_eval --model local-completions`, the command docs/serve.md
gives) scoring a tiny trained run through a real `blu serve` process, with three small local
tasks written by the test (nothing is downloaded): a multiple-choice task (loglikelihood), a
perplexity task (loglikelihood_rolling) and a generation task with a stop sequence
(generate_until). The harness reaches the tokenizer through the server (its remote backend) and
its numbers are checked against blu's own forward and `blu generate`."""

import json
import os
from pathlib import Path
import subprocess
import sys

from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # the test extras have lm-eval
import pytest
from serve_support import Server
import torch

import blu

# Short enough that the harness, told the context (max_length), cuts none of them: at most
# context - max_gen_toks characters
QUESTIONS = ["ROMEO: I love", "KING: Come", "Citizen: We are", "O, speak"]
TEXTS = ["ROMEO: But soft, what light through yonder window breaks? It is the east.",
         "KING: Now is the winter of our discontent made glorious summer by this sun."]


def task_yaml(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
            + body)


@pytest.fixture(scope="module")
def local(served_run):
    return blu.load(served_run)


@pytest.fixture(scope="module")
def harness(served_run, local, tmp_path_factory) -> dict:
    """lm_eval run once on the three tasks; each task's logged samples by doc_id, and the results."""
    folder = tmp_path_factory.mktemp("lm-eval")
    greedy = ["".join(local.generate(q, max_new_tokens=3, temperature=0.0, seed=0)) for q in QUESTIONS]
    # each question's choices: its greedy continuation (is_greedy true), and two others, the answer varying
    docs = [{"question": q, "choices": [g, "xqz", " the"][i % 3:] + [g, "xqz", " the"][: i % 3], "answer": (3 - i % 3) % 3}
            for i, (q, g) in enumerate(zip(QUESTIONS, greedy))]
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (folder / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": g}) + "\n"
                                              for q, g in zip(QUESTIONS, greedy)))
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(task_yaml("blu_mc", folder / "mc.jsonl", (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")))
    (tasks / "ppl.yaml").write_text(task_yaml("blu_ppl", folder / "texts.jsonl", (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")))
    (tasks / "gen.yaml").write_text(task_yaml("blu_gen", folder / "gen.jsonl", (
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 12\n  do_sample: false\n  temperature: 0\n"
        "metric_list:\n  - metric: exact_match\n")))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder / "hf"),
           "HF_DATASETS_CACHE": str(folder / "hf" / "datasets")}
    with Server(served_run) as server:
        start = json.loads(server_get(server, "/tokenizer_info"))["start_token_id"]
        model_args = (f"base_url={server.url}/v1/completions,model=shakes,tokenizer_backend=remote,"
                      f"custom_prefix_token_id={start},max_length={local.model.config.context + 1}")
        command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                   "--tasks", "blu_mc,blu_ppl,blu_gen", "--include_path", str(tasks), "--batch_size", "4",
                   "--output_path", str(folder / "out"), "--log_samples"]
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = {"results": json.loads(next((folder / "out").rglob("results_*.json")).read_text())["results"]}
    for task in ("blu_mc", "blu_ppl", "blu_gen"):
        lines = next((folder / "out").rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
        out[task] = sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])
    return out


def server_get(server, path: str) -> str:
    import httpx

    return httpx.get(server.url + path, timeout=10).text


def logprobs_of(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def continuation_score(local, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) by blu's forward, and whether each of its tokens is the
    likeliest (never <unk>), as the harness defines them."""
    ids, start = local.tokenizer.encode(context + continuation), len(local.tokenizer.encode(context))
    rows = logprobs_of(local.model, ids)
    total = sum(rows[t - 1, ids[t]].item() for t in range(start, len(ids)))
    greedy = all(rows[t - 1, 1:].argmax().item() + 1 == ids[t] for t in range(start, len(ids)))
    return total, greedy


def test_multiple_choice_loglikelihoods_are_blus_forward(harness, local):
    """Every choice's log-likelihood the harness got is blu's forward's within 1e-4, is_greedy
    agrees (the greedy continuation is one of the choices), and so does the accuracy."""
    correct = []
    for sample in harness["blu_mc"]:
        doc = sample["doc"]
        ours = [continuation_score(local, doc["question"], c) for c in doc["choices"]]
        theirs = [(float(ll), greedy == "True") for ll, greedy in sample["filtered_resps"]]
        assert [ll for ll, _ in theirs] == pytest.approx([ll for ll, _ in ours], abs=1e-4)
        assert [g for _, g in theirs] == [g for _, g in ours]
        assert any(g for _, g in ours), "the greedy continuation is a choice"
        correct.append(max(range(len(ours)), key=lambda i: ours[i][0]) == doc["answer"])
    assert harness["results"]["blu_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_rolling_loglikelihood_is_blus_forward_on_the_harness_windows(harness, local):
    """A perplexity task: each text's log-likelihood is the sum of blu's forward over the
    harness's own rolling windows, which start after the prefix id given to it
    (custom_prefix_token_id = /tokenizer_info's start_token_id)."""
    context = local.model.config.context
    for sample, text in zip(harness["blu_ppl"], TEXTS):
        start = local.tokenizer.start_ids()[0]
        total = 0.0
        for before, after in map(make_disjoint_window, get_rolling_token_windows(local.tokenizer.encode(text), start,
                                                                                   context - 1, 1)):
            ids = (before + after)[-context:]  # as the harness cuts a request to its max_length - 1
            first = len(ids) - len(after)
            rows = logprobs_of(local.model, ids)
            total += sum(rows[t - 1, ids[t]].item() for t in range(first, len(ids)))
        assert float(sample["filtered_resps"][0]) == pytest.approx(total, abs=1e-4)
    assert harness["results"]["blu_ppl"]["word_perplexity,none"] > 1


def test_generate_until_stops_and_is_blu_generate(harness, local):
    """generate_until (temperature 0, a stop sequence): each answer is what `blu generate`
    gives greedily with that stop, the harness's exact_match counting it."""
    for sample in harness["blu_gen"]:
        question = sample["doc"]["question"]
        expected = "".join(local.generate(question, max_new_tokens=12, temperature=0.0, seed=0, stop=["\n"]))
        assert sample["filtered_resps"][0] == expected and "\n" not in expected
    assert harness["results"]["blu_gen"]["exact_match,none"] == pytest.approx(
        sum(s["filtered_resps"][0] == s["doc"]["answer"] for s in harness["blu_gen"]) / len(QUESTIONS))
