"""The chat template of every run kind (chat_kinds.py): byte and bpe runs gain ChatML's two special
tokens when they start fine-tuning on conversations, with rows that leave the step-0 loss on
ordinary text within its bound; a char run gets a plain template of its own characters; the
template travels into the HF export (transformers' assistant mask is blu's) and the GGUF export
(llama.cpp's chat completion is `blu serve`'s), and serve stops at its end of turn."""

import json
import math
import random

from pretrained_support import smollm_style_tokenizer, write_llama_folder
import pytest
from serve_support import Server
import torch

import blu
from blu.chat_kinds import CHATML, IM_END, IM_START, PLAIN
from blu.chat_mask import conversation_tokens
from blu.chat_template import ChatFormat
from blu.data.prepare import read_tokenizer
from blu.evaluate import evaluate
from blu.fine_tune import load_parent_weights
from blu.model import Transformer
from blu.runs import load_config, load_run, validation_text

WORDS = ["tree", "lamp", "rose", "king", "moon", "star", "bird", "fish", "door", "wind", "sand", "gold"]
FLAGS = ["--dim", "32", "--n-layer", "1", "--n-head", "2", "--hidden-dim", "64", "--context", "64",
         "--batch-size", "8", "--eval-every", "10"]
CHAT_FLAGS = ["--batch-size", "8", "--lr", "1e-2"]
# (system, user, assistant) turns with a reply ending in blank space and an empty reply: the mask's edge cases.
CONVERSATION = [{"role": "system", "content": "Reverse the word."}, {"role": "user", "content": "tree"},
                {"role": "assistant", "content": " eert \n"}, {"role": "user", "content": "lamp"},
                {"role": "assistant", "content": ""}]


def write_chats(path, n: int = 80) -> str:
    """n conversations asking for a short word reversed (a task with one right answer)."""
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        word = rng.choice(WORDS)
        lines.append(json.dumps({"messages": [{"role": "system", "content": "Reverse the word."},
                                              {"role": "user", "content": word},
                                              {"role": "assistant", "content": word[::-1]}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """Per kind, a parent trained on Shakespeare (byte with a tied head, bpe and char not) and its
    child fine-tuned on the reversal conversations; bpe and char long enough to end their replies."""
    from blu.cli import main

    folder = tmp_path_factory.mktemp("chat_kinds")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    chats = write_chats(folder / "chats.jsonl")
    made = {"chats": chats}
    for kind, extra, steps in (("bpe", ["--vocab-size", "320"], 40), ("byte", ["--tie-embeddings"], 10),
                               ("char", [], 40)):
        parent, child = folder / f"parent-{kind}", folder / kind
        assert main(["train", *FLAGS, "--iters", "10", "--data", str(corpus), "--tokenizer", kind, *extra,
                     "--out", str(parent)]) == 0
        assert main(["train", "--init-from", str(parent), "--data", chats, "--iters", str(steps), "--eval-every",
                     str(steps), *CHAT_FLAGS, "--out", str(child)]) == 0
        made[kind], made["parent-" + kind] = child, parent
    return made


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_and_bpe_runs_gain_the_chatml_tokens_as_special_tokens(runs, kind):
    """Guards against ChatML markers the model cannot tell from text: the child's tokenizer.json
    records both as special tokens after the parent's last id, the template's rendering makes them
    the tokens, and typed in a completion prompt they stay the characters they are, as in the parent."""
    parent, child = read_tokenizer(runs["parent-" + kind]), read_tokenizer(runs[kind])
    added = {t["content"]: t for t in json.loads((runs[kind] / "tokenizer.json").read_text())["added_tokens"]}
    assert child.vocab_size == parent.vocab_size + 2 == load_config(runs[kind])[1].vocab_size
    assert [added[t]["id"] for t in (IM_START, IM_END)] == [parent.vocab_size, parent.vocab_size + 1]
    assert added[IM_START]["special"] and added[IM_END]["special"]
    assert (runs[kind] / "chat_template.jinja").read_text() == CHATML == child.chat_template
    typed = f"{IM_START}user\nhi{IM_END}"
    assert child.encode(typed) == parent.encode(typed) and child.decode(child.encode(typed)) == typed
    chat = ChatFormat(child)
    assert chat.encode(typed)[0] == parent.vocab_size and chat.end_of_turn == parent.vocab_size + 1


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_the_new_rows_leave_the_step_0_loss_on_ordinary_text_within_its_bound(runs, kind):
    """Guards against new rows that disturb what the parent knew: before any step, the child's loss
    on the parent's validation text exceeds the parent's by more than 0 (the rows are there and
    take probability) and at most log(1 + 2/V), V the parent's vocabulary (rows at the mean of the
    others: each new logit is the mean logit). Tied (byte) and untied (bpe) heads."""
    meta, parent, tokenizer = load_run(runs["parent-" + kind])
    child_meta, child_config, _, _ = load_config(runs[kind])
    child = Transformer(child_config)
    load_parent_weights(child, child_meta["init_from"])
    text = validation_text(meta, tokenizer)
    theirs, ours = evaluate(parent, text.tokens).loss, evaluate(child.eval(), text.tokens).loss
    bound = math.log(1 + 2 / tokenizer.vocab_size)
    assert 0 < ours - theirs <= bound + 1e-6, (ours - theirs, bound)
    with torch.no_grad():  # the rows themselves: the parent's, then the mean of them twice
        rows = child.tok_embeddings.weight
        assert torch.equal(rows[:-2], parent.tok_embeddings.weight) and torch.allclose(rows[-1], rows[:-2].mean(0))


def test_a_grown_run_resumes_from_its_save(runs, cli, tmp_path):
    """Guards against a chat run whose grown vocabulary breaks its checkpoint: a resume with a new
    budget goes on from the saved state with the same tokenizer and template."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(runs["byte"], folder)
    code, _, err = cli("train", "--resume", "--out", folder, "--iters", "14")
    assert code == 0, err
    assert json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 14
    assert read_tokenizer(folder).chat_template == CHATML and read_tokenizer(folder).vocab_size == 259


@pytest.fixture(scope="module")
def imported(tmp_path_factory, shakespeare):
    """An imported run whose checkpoint's template marks the assistant's part with {% generation %}."""
    from blu.cli import main

    folder = tmp_path_factory.mktemp("imported_chat")
    tokenizer = smollm_style_tokenizer(shakespeare.read_text(encoding="utf-8")[:100_000])
    write_llama_folder(folder / "hf", tokenizer, "smollm", seed=3)
    config = json.loads((folder / "hf" / "tokenizer_config.json").read_text())
    (folder / "hf" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    assert main(["import", "--from", str(folder / "hf"), "--out", str(folder / "run")]) == 0
    return folder / "run"


@pytest.mark.parametrize("kind", ["byte", "bpe", "char", "imported"])
def test_transformers_assistant_mask_on_the_hf_export_is_blus(runs, imported, kind, cli, tmp_path):
    """Guards against a template that does not travel, or travels without its generation blocks or
    with the markers split into text: on each kind's HF export, apply_chat_template's ids and
    assistant mask equal those blu trains on (a reply ending in blank space, an empty one)."""
    from transformers import AutoTokenizer

    run = imported if kind == "imported" else runs[kind]
    assert cli("export", "--run", run, "--format", "hf", "--out", tmp_path / "hf")[0] == 0
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf").apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = conversation_tokens(ChatFormat(read_tokenizer(run)), CONVERSATION)
    assert ids == list(theirs["input_ids"]) and [int(m) for m in mask] == list(theirs["assistant_masks"])
    assert sum(mask) > 3
    if kind == "char":
        assert read_tokenizer(run).chat_template == PLAIN
        assert "".join(read_tokenizer(run).decode([i]) for i, m in zip(ids, mask) if m) == " eert \n\n\n\n\n"


def test_llama_cpps_chat_completion_on_the_gguf_export_is_blu_serves(runs, cli, tmp_path):
    """Guards against a GGUF that loses the template or its end of turn: llama-cpp-python's chat
    completion with the file's own template (greedy) gives `blu serve`'s /v1/chat/completions
    answer through the official client, both ending at <|im_end|> (a CONTROL token, the EOT)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import gguf

    out = tmp_path / "chat.gguf"
    assert cli("export", "--run", runs["bpe"], "--format", "gguf", "--out", out)[0] == 0
    reader = gguf.GGUFReader(out)
    end = read_tokenizer(runs["bpe"]).vocab_size - 1
    assert reader.fields["tokenizer.chat_template"].contents() == CHATML
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == end
    assert reader.fields["tokenizer.ggml.token_type"].contents()[end - 1:] == [3, 3]
    llm = llama_cpp.Llama(str(out), n_ctx=64, n_threads=2, verbose=False)
    with Server(runs["bpe"]) as server:
        client = server.client()
        for word in ("moon", "gold", "wind"):
            messages = [{"role": "system", "content": "Reverse the word."}, {"role": "user", "content": word}]
            theirs = llm.create_chat_completion(messages, temperature=0.0, max_tokens=12, repeat_penalty=1.0)
            ours = client.chat.completions.create(model="bpe", messages=messages, temperature=0, max_tokens=12)
            assert ours.choices[0].message.content == theirs["choices"][0]["message"]["content"]
            assert ours.choices[0].finish_reason == theirs["choices"][0]["finish_reason"] == "stop"
            assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]


def test_serve_ends_a_char_runs_reply_at_its_blank_line(runs):
    """Guards against a char run's reply running into the next turn: with no end-of-turn token,
    serve stops at the template's blank line, its reply the greedy continuation cut there."""
    run = blu.load(runs["char"])
    chat = ChatFormat(run.tokenizer)
    assert chat.end_of_turn is None and chat.end_text == "\n\n"
    messages = [{"role": "system", "content": "Reverse the word."}, {"role": "user", "content": "moon"}]
    continued = "".join(run.generate(chat.prompt(messages), 40, temperature=0))
    assert "\n\n" in continued
    with Server(runs["char"]) as server:
        answer = server.client().chat.completions.create(model="char", messages=messages, temperature=0, max_tokens=40)
    assert answer.choices[0].message.content == continued[: continued.index("\n\n")]
    assert answer.choices[0].finish_reason == "stop"


def test_bad_template_settings_are_one_line_errors(runs, cli, tmp_path, small_corpus, tiny_flags):
    """Guards against a template that cannot work being found late: --chat-template without
    conversations, and a char vocabulary without the plain template's characters, exit 2 in one line."""
    (tmp_path / "t.jinja").write_text(CHATML)
    code, _, err = cli("train", *tiny_flags, "--data", small_corpus, "--chat-template", tmp_path / "t.jinja",
                       "--out", tmp_path / "x", "--iters", "1")
    assert code == 2 and "--chat-template is for training on conversations" in err and len(err.splitlines()) == 1
    lower = tmp_path / "lower.txt"
    lower.write_text("the cat sat on a mat and ran\n" * 300)
    assert cli("train", *tiny_flags, "--data", lower, "--out", tmp_path / "p", "--iters", "2")[0] == 0
    code, _, err = cli("train", "--init-from", tmp_path / "p", "--data", runs["chats"], "--out", tmp_path / "c")
    assert code == 2 and "lacks: ':iuy'" in err and len(err.strip().splitlines()) == 1


def test_chat_template_file_replaces_the_kinds_template(runs, cli, tmp_path):
    """Guards against --chat-template being ignored: a byte run fine-tuned with the plain template
    keeps that file as its template (and still gains the ChatML tokens), its replies then ending
    at the template's blank line as a char run's do."""
    (tmp_path / "plain.jinja").write_text(PLAIN)
    code, _, err = cli("train", "--init-from", runs["parent-byte"], "--data", runs["chats"], "--chat-template",
                       tmp_path / "plain.jinja", "--iters", "2", "--eval-every", "2", "--out", tmp_path / "c")
    assert code == 0, err
    tokenizer = read_tokenizer(tmp_path / "c")
    assert tokenizer.chat_template == PLAIN and tokenizer.vocab_size == 259
    chat = ChatFormat(tokenizer)
    assert chat.end_of_turn is None and chat.end_text == "\n\n"
