"""Conversation data for fine-tuning: the assistant mask as transformers computes it, the lines a
conversation file may not hold, and the loss taken on the assistant's tokens of a whole global batch."""

import json

from pretrained_support import smollm_style_tokenizer, write_tokenizer_folder
import pytest

from blu.chat_mask import conversation_tokens
from blu.chat_template import ChatFormat, ChatTemplateError
from blu.tokenizers.pretrained import PretrainedTokenizer

# ChatML with transformers' {% generation %} blocks around what the assistant writes, its end-of-turn included.
GENERATION = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
              "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATIONS = [
    [{"role": "system", "content": "Speak as Shakespeare would."}, {"role": "user", "content": "Who is Romeo?"},
     {"role": "assistant", "content": "A Montague, in love."}, {"role": "user", "content": "And Juliet? café 😀"},
     {"role": "assistant", "content": " A Capulet,\nhis love. "}],
    [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "O, hi!"}, {"role": "user", "content": "Bye"}],
]


@pytest.fixture(scope="module")
def tokenizer(shakespeare):
    return smollm_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:200_000])


def folder_with(folder, tokenizer, template: str):
    """A tokenizer folder as SmolLM2's, with `template` as its chat template."""
    folder = write_tokenizer_folder(folder, tokenizer, "smollm")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_the_assistant_mask_is_transformers(tmp_path, tokenizer, conversation):
    """Guards against training on the wrong tokens: a user turn or a marker in the loss, an
    assistant token or the end-of-turn token left out, an empty reply or a last user turn mishandled."""
    from transformers import AutoTokenizer

    messages = CONVERSATIONS[conversation]
    folder = folder_with(tmp_path / "tok", tokenizer, GENERATION)
    theirs = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(folder)), messages)
    assert ids == list(theirs["input_ids"])
    assert [int(m) for m in mask] == list(theirs["assistant_masks"])
    assert any(mask)


def test_a_template_without_generation_blocks_gives_the_same_mask(tmp_path, tokenizer):
    """Guards against a mask that needs the template's {% generation %} blocks: plain ChatML
    (what most checkpoints ship) picks out the same tokens."""
    plain = GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for messages in CONVERSATIONS:
        tagged = conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(
            folder_with(tmp_path / "a", tokenizer, GENERATION))), messages)
        assert conversation_tokens(ChatFormat(PretrainedTokenizer.from_folder(
            folder_with(tmp_path / "b", tokenizer, plain))), messages) == tagged


def test_a_template_that_rewrites_past_turns_is_refused(tmp_path, tokenizer):
    """Guards against a mask taken from a text the model never sees: a template that writes past
    replies otherwise than the last one (as reasoning templates drop past thoughts) is an error."""
    rewrites = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if loop.last else 'x' }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = ChatFormat(PretrainedTokenizer.from_folder(folder_with(tmp_path / "tok", tokenizer, rewrites)))
    with pytest.raises(ChatTemplateError, match="differently"):
        conversation_tokens(chat, CONVERSATIONS[0])


def chats_from(text: str, n: int) -> list[dict]:
    """n conversations from a play: a system line, a line asked, the next line answered (twice)."""
    lines = [line for line in text.splitlines() if len(line) > 20]
    return [{"messages": [{"role": "system", "content": "Answer with the next line."},
                          {"role": "user", "content": lines[4 * i]}, {"role": "assistant", "content": lines[4 * i + 1]},
                          {"role": "user", "content": lines[4 * i + 2]}, {"role": "assistant", "content": lines[4 * i + 3]}]}
            for i in range(n)]


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tokenizer):
    """An imported (hf-kind) run of a small random Llama whose tokenizer has a ChatML template."""
    from pretrained_support import write_llama_folder

    from blu.cli import main

    folder = tmp_path_factory.mktemp("imported")
    write_llama_folder(folder / "hf", tokenizer, "smollm", seed=3)
    assert main(["import", "--from", str(folder / "hf"), "--out", str(folder / "run")]) == 0
    return folder / "run"


BAD_LINES = {
    "not JSON": '{"messages": [',
    'no "messages" list': {"text": "hello"},
    "the role 'robot'": {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
    "not a string": {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]},
    "no assistant turn": {"messages": [{"role": "user", "content": "x"}]},
}


@pytest.mark.parametrize("reason", BAD_LINES)
def test_a_bad_line_is_named_by_file_and_line_or_skipped(tmp_path, cli, imported, shakespeare, reason):
    """Guards against a bad conversation line that crashes, trains on garbage or is reported
    without saying where: exit 2 naming file:line, or left out and listed with --skip-bad-files."""
    good = chats_from(shakespeare.read_text(encoding="utf-8"), 12)
    data = write_jsonl(tmp_path / "chats.jsonl", [*good[:5], "", BAD_LINES[reason], *good[5:]])
    code, _, err = cli("train", "--init-from", imported, "--data", data, "--out", tmp_path / "a", "--iters", 1)
    assert code == 2
    assert "chats.jsonl: line 7 " in err and reason in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("train", "--init-from", imported, "--data", data, "--out", tmp_path / "b", "--iters", 1,
                       "--skip-bad-files")
    assert code == 0, err
    assert "left out 1 bad lines" in err and "line 7" in err and reason in err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["data"]["conversations"]["train"] + \
        json.loads((tmp_path / "b" / "config.json").read_text())["data"]["conversations"]["validation"] == 12


def test_a_short_fine_tune_lowers_the_assistant_validation_loss(tmp_path, cli, imported, shakespeare):
    """Guards against a chat fine-tune that learns nothing or scores the wrong tokens: its
    validation loss (assistant tokens of the held-out conversations) falls, and a resumed run
    reads the same conversations."""
    from blu.metrics import MetricsLog

    data = write_jsonl(tmp_path / "chats.jsonl", chats_from(shakespeare.read_text(encoding="utf-8"), 200))
    code, _, err = cli("train", "--init-from", imported, "--data", data, "--out", tmp_path / "tuned", "--iters", 30,
                       "--eval-every", 15, "--lr", 1e-3, "--batch-size", 8)
    assert code == 0, err
    evals = [r["val_loss"] for r in MetricsLog(tmp_path / "tuned").rows() if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.5, evals
    record = json.loads((tmp_path / "tuned" / "config.json").read_text())["data"]
    assert record["kind"] == "conversations" and record["conversations"] == {"train": 180, "validation": 20}
    code, _, err = cli("train", "--out", tmp_path / "tuned", "--resume", "--iters", 32)
    assert code == 0, err
    code, out, err = cli("eval", "--run", tmp_path / "tuned", "--json")  # its conversations, not misread as text
    assert code == 0, err
    resumed = [r["val_loss"] for r in MetricsLog(tmp_path / "tuned").rows() if "val_loss" in r]
    assert json.loads(out)["val_loss"] == pytest.approx(min(resumed), abs=1e-5)  # the best weights, as saved


def test_the_step_loss_is_the_mean_over_the_global_batchs_assistant_tokens(tmp_path, imported, shakespeare):
    """Guards against a mean of per-row or per-micro-batch means (which weighs a short reply as
    much as a long one): with two micro-batches of different assistant counts, the step's loss is
    the sum of every assistant token's loss over their count, computed here by hand."""
    import torch
    import torch.nn.functional as F

    from blu.chat_train import ChatBatches
    from blu.config import Budget, TextSettings
    from blu.runs import create_run
    from blu.train import Trainer

    data = write_jsonl(tmp_path / "chats.jsonl", chats_from(shakespeare.read_text(encoding="utf-8"), 40))
    run = create_run(tmp_path / "run", TextSettings(data=data), overrides={"grad_accum": 2, "batch_size": 3, "dropout": 0.0},
                     budget=Budget(100), init_from=imported, log=lambda m: None)
    trainer = Trainer(run, torch.device("cpu"), lambda m: None)
    same = ChatBatches(run.chats[0], 3, run.train_config.seed)
    same.generator.set_state(trainer.batches.generator.get_state())  # the draws the step will make
    micro = [same.next() for _ in range(2)]
    counts = [int((y != -100).sum()) for _, y in micro]
    assert counts[0] != counts[1] and 0 < min(counts)
    with torch.no_grad():
        losses = [F.cross_entropy(trainer.model(x).float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
                  for x, y in micro]
        rows = [F.cross_entropy(trainer.model(x).float().transpose(1, 2), y, ignore_index=-100, reduction="none").sum(1)
                / (y != -100).sum(1) for x, y in micro]
    expected = float(sum(losses)) / sum(counts)
    agreed = trainer.step(trainer.model)
    assert agreed.finite
    got = float(agreed.loss_sum) / 2
    # Far closer to the hand computation than the other rules are: the mean of the rows' means,
    # the mean of the micro-batches' means (at random weights the losses differ little, so closely).
    others = [float(torch.cat(rows).mean()), (float(losses[0]) / counts[0] + float(losses[1]) / counts[1]) / 2]
    for other in others:
        assert abs(got - expected) < abs(other - expected) / 20, (got, expected, others)


def test_two_processes_take_the_mean_over_both_ranks_assistant_tokens(tmp_path, cli, imported, shakespeare):
    """torchrun with 2 processes of batch 2 logs the train and validation losses of 1 process of
    batch 4: guards against a step loss that is a mean of the ranks' means (each rank's batch holds
    another number of assistant tokens) and a validation loss that is one rank's share."""
    import os
    import subprocess
    import sys

    from blu.metrics import MetricsLog

    data = write_jsonl(tmp_path / "chats.jsonl", chats_from(shakespeare.read_text(encoding="utf-8"), 60))
    flags = ["--init-from", imported, "--data", data, "--iters", 20, "--eval-every", 10, "--lr", 1e-3]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "blu", "train",
               *map(str, flags), "--out", str(tmp_path / "two"), "--batch-size", "2"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    code, _, err = cli("train", *flags, "--out", tmp_path / "one", "--batch-size", 4)
    assert code == 0, err
    one, two = MetricsLog(tmp_path / "one").rows(), MetricsLog(tmp_path / "two").rows()
    assert [sorted(r) for r in one] == [sorted(r) for r in two]
    assert sum("train_loss" in r for r in one) == 2 and sum("val_loss" in r for r in one) == 3
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
