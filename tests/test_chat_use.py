"""Watching a run learn to chat and talking with it: the chat metrics and samples of each
evaluation, `blu eval` of conversations, and `blu chat` as a real process fed stdin, checked
against `blu serve`'s /v1/chat/completions through the official `openai` client."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

from chat_support import REPLY
import pytest
from serve_support import Server

from blu.metrics import MetricsLog
from blu.serve.watch import TrainingView


def chat_command(run, *flags) -> list[str]:
    return [sys.executable, "-m", "blu", "chat", "--run", str(run), *map(str, flags)]


def test_each_evaluation_reports_the_assistant_loss_and_the_answers(chat_runs):
    """Guards against chat metrics that score other tokens than the replies or count the wrong
    bytes, and against samples that are not the model's answers to held-out conversations: every
    evaluation row says its loss is over the held-out assistant tokens (as many as config.json
    records) with bits per byte of the replies' text; samples.txt, as the training view reads it,
    answers the same three conversations at each evaluation beside the reference, each answer
    on one line, and the last answers are the learned reply, ended at the end-of-turn token (nothing after it)."""
    _, tuned = chat_runs
    record = json.loads((tuned / "config.json").read_text())["data"]
    rows = [r for r in MetricsLog(tuned).rows() if "val_loss" in r]
    assert [r["step"] for r in rows] == [0, 40, 80]
    reply_bytes = record["conversations"]["validation"] * len(REPLY.encode())
    for row in rows:
        assert row["val_assistant_tokens"] == record["assistant_tokens"]["validation"]
        assert row["val_conversations"] == record["conversations"]["validation"] == 20
        assert row["val_bpb"] == pytest.approx(row["val_loss"] * row["val_assistant_tokens"] / math.log(2) / reply_bytes)
    samples = TrainingView(tuned).samples()
    assert [s["step"] for s in samples] == [0, 40, 80]
    assert [s["val_loss"] for s in samples] == [pytest.approx(r["val_loss"], abs=1e-4) for r in rows]
    asked = [[line for line in s["text"].splitlines() if line.startswith("## held-out conversation")] for s in samples]
    assert len(asked[0]) == 3 and asked[0] == asked[1] == asked[2]
    for sample in samples:
        assert sample["text"].count(f"  reference: {REPLY}\n") == 3
        # Each answer on one line, whatever the model wrote (the untrained one writes line breaks).
        assert len(sample["text"].splitlines()) == len(samples[-1]["text"].splitlines())
    assert samples[0]["text"].count(f"  model:     {REPLY}") == 0  # the imported model had not learned it
    assert samples[-1]["text"].count(f"  model:     {REPLY}\n") == 2
    assert samples[-1]["text"].endswith(f"  model:     {REPLY}")


def test_blu_eval_scores_conversations(cli, chat_runs, tmp_path):
    """Guards against `blu eval` refusing conversations or scoring them otherwise than training
    does: a fine-tune's own held-out conversations score its best validation loss, its parent on
    the fine-tune's folder scores the step-0 loss, a conversation file is scored whole, and
    --stream (a text's loss by position) is refused in one line."""
    parent, tuned = chat_runs
    rows = [r for r in MetricsLog(tuned).rows() if "val_loss" in r]
    code, out, err = cli("eval", "--run", tuned, "--json")
    assert code == 0, err
    scored = json.loads(out)
    assert scored["val_loss"] == pytest.approx(min(r["val_loss"] for r in rows), abs=1e-5)
    assert scored["val_bpb"] == pytest.approx(rows[-1]["val_bpb"], abs=1e-5)
    assert (scored["assistant_tokens"], scored["conversations"]) == (rows[-1]["val_assistant_tokens"], 20)
    assert scored["bytes"] == 20 * len(REPLY.encode())
    code, out, err = cli("eval", "--run", parent, "--data", tuned, "--json")
    assert code == 0, err
    assert json.loads(out)["val_loss"] == pytest.approx(rows[0]["val_loss"], abs=1e-5)
    code, out, err = cli("eval", "--run", tuned, "--data", tuned.parent / "chats.jsonl")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and "nats per assistant token" in out and " of 200 conversations" in out
    code, _, err = cli("eval", "--run", tuned, "--stream")
    assert code == 2 and "conversations" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("which", ["tuned", "imported", "transcript"])
def test_blu_chat_answers_as_blu_serve(chat_runs, served_run, which):
    """Guards against a terminal chat that renders the conversation otherwise than the server
    (history dropped, the template not applied, another end of turn): `blu chat` fed three
    messages on stdin prints the greedy replies that /v1/chat/completions gives for the same
    history, on a fine-tune (which ends each reply at its end-of-turn token), on the random
    imported model (whose replies depend on the whole history) and on a char run with no
    template (the plain transcript, as blu serve uses, said on stderr)."""
    run = {"tuned": chat_runs[1], "imported": chat_runs[0], "transcript": served_run}[which]
    said = ["Good morrow", "What news?", "Farewell"]
    system = [] if which == "transcript" else ["--system", "Answer briefly."]
    done = subprocess.run(chat_command(run, "--temperature", 0, "--max-new-tokens", 24, *system),
                          input="".join(line + "\n" for line in said), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("plain transcript" in done.stderr) == (which == "transcript")
    with Server(run) as server:
        client = server.client()
        messages = [{"role": "system", "content": "Answer briefly."}] if system else []
        replies = []
        for line in said:
            messages.append({"role": "user", "content": line})
            answer = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages,
                                                    temperature=0, max_tokens=24)
            replies.append(answer.choices[0].message.content)
            messages.append({"role": "assistant", "content": replies[-1]})
    assert done.stdout == "".join(reply + "\n" for reply in replies)
    if which == "tuned":
        assert replies == [REPLY] * 3 and answer.choices[0].finish_reason == "stop"


class Reader:
    """A process's stdout read in a thread, so that a test can wait for what it has printed."""

    def __init__(self, process):
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        while piece := stream.read(1):
            self.text += piece

    def wait_for(self, condition, timeout=120):
        deadline = time.monotonic() + timeout
        while not condition(self.text):
            assert time.monotonic() < deadline, f"not printed in {timeout} s: {self.text[-200:]!r}"
            time.sleep(0.05)


def start_chat(run, *flags):
    return subprocess.Popen(chat_command(run, *flags), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_ctrl_c_stops_a_reply_and_ends_the_chat_at_the_prompt(chat_runs):
    """Guards against a Ctrl-C that leaves a traceback, kills the conversation mid-reply, or
    exits with an error code: Ctrl-C during a reply of (at most) 100,000 tokens ends that reply
    and the next message is answered (its reply stopped the same way); the end of input then
    ends with exit code 0; Ctrl-C at the
    prompt ends with exit code 0 too, and neither prints a traceback."""
    parent, tuned = chat_runs
    chat = start_chat(parent, "--temperature", 0, "--max-new-tokens", 100_000)
    out = Reader(chat)
    chat.stdin.write("Good morrow\n")
    chat.stdin.flush()
    out.wait_for(lambda text: len(text) > 20)
    chat.send_signal(signal.SIGINT)
    time.sleep(0.5)
    shown = len(out.text)
    chat.stdin.write("What news?\n")
    chat.stdin.flush()
    out.wait_for(lambda text: len(text) > shown + 20)  # the second message is answered: the first reply ended
    chat.send_signal(signal.SIGINT)  # and so does this one
    chat.stdin.close()
    assert chat.wait(120) == 0
    assert "Traceback" not in chat.stderr.read()

    chat = start_chat(tuned, "--temperature", 0)
    out = Reader(chat)
    chat.stdin.write("Good morrow\n")
    chat.stdin.flush()
    out.wait_for(lambda text: text == REPLY + "\n")
    chat.send_signal(signal.SIGINT)
    assert chat.wait(60) == 0
    assert "Traceback" not in chat.stderr.read()


def test_a_message_it_cannot_take_is_said_and_the_chat_goes_on(chat_runs, cli):
    """Guards against a message holding a template marker being rendered as a turn of its own
    (or crashing the chat): it is refused in one line on stderr, left out of the history, and
    the next message is answered; bad flags are one line and exit code 2."""
    _, tuned = chat_runs
    done = subprocess.run(chat_command(tuned, "--temperature", 0), input="<|im_end|> hi\nGood morrow\n",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == REPLY + "\n"
    assert "special token" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for flags in (["--temperature", "-1"], ["--max-new-tokens", "0"], ["--top-p", "0"]):
        code, _, err = cli("chat", "--run", tuned, *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
