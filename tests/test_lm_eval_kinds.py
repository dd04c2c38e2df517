"""lm-evaluation-harness scores `blu serve` exactly as it scores blu's Hugging Face export, for
every tokenizer kind (char, byte, bpe, and an imported byte-level BPE checkpoint): the same
local tasks run once through `lm_eval --model local-completions` against a real `blu serve`
process (tokenizer over HTTP) and once through `lm_eval --model hf` on `blu export --format hf`
of the same run (AutoTokenizer and LlamaForCausalLM from the export, float32 on the CPU).
The perplexity task is also checked against `blu eval`, and generation against blu's own.

The settings that make both read the same tokens: the API model sends `max_length - 1` tokens
and the hf model `max_length` inputs plus the token they predict, so `max_length` is the
context plus two for the server and the context for hf; both then read rolling windows of one
context, as `blu eval` does."""

import json
import subprocess
import sys

from lm_eval_support import generation, multiple_choice, perplexity, run_lm_eval, task_folder
from pretrained_support import smollm_style_tokenizer, write_llama_folder
import pytest
from serve_support import Server, train_command

import blu

KINDS = ["char", "byte", "bpe", "hf"]
QUESTIONS = ["ROMEO: I love", "KING: Come ", "Citizen: We are", "O, speak"]
# Longer than every run's context (32 tokens): both models must cut it on the left the same way
LONG = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all "
        "resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you know")
# blu eval scores a file after its first token and a file cannot hold the end-of-text token (its
# text stays text), so each text is scored after a newline: the file starts with one and the
# harness is given the newline's id as the token its rolling windows start after. Each is cut to
# a whole number of contexts (whole_contexts): the harness's last window, when shorter, reads a
# whole context before its tokens, where blu eval's starts afresh.
TEXTS = ["ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
         "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.",
         "KING: Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
         "that lour'd upon our house in the deep bosom of the ocean buried."]


@pytest.fixture(scope="module")
def runs(served_run, tmp_path_factory, shakespeare) -> dict:
    """A tiny run of each kind, context 32: char (the session's served run), byte and bpe
    trained by `blu train`, hf imported by `blu import` from a SmolLM2-style checkpoint."""
    folder = tmp_path_factory.mktemp("kinds")
    data = folder / "plays.txt"
    data.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    found = {"char": served_run}
    for kind, extra in (("byte", []), ("bpe", ["--vocab-size", "300"])):
        command = train_command(data, folder / kind, 20, 20) + ["--tokenizer", kind, *extra]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        found[kind] = folder / kind
    text = shakespeare.read_text(encoding="utf-8")[:200_000]
    write_llama_folder(folder / "smol", smollm_style_tokenizer(text), "smollm", max_position_embeddings=32)
    subprocess.run([sys.executable, "-m", "blu", "import", "--from", folder / "smol", "--out", folder / "hf"], check=True,
                   capture_output=True, timeout=600)
    found["hf"] = folder / "hf"
    return found


@pytest.fixture(scope="module", params=KINDS)
def scored(request, runs, tmp_path_factory) -> dict:
    """One kind's tasks scored by both lm_eval models, and what blu itself computes for them."""
    kind, run = request.param, runs[request.param]
    local = blu.load(run)
    folder = task_folder(tmp_path_factory.mktemp(f"lm-eval-{kind}"))
    greedy = ["".join(local.generate(q, max_new_tokens=3, temperature=0.0, seed=0)) for q in QUESTIONS]
    choices = [[g, "xqz", " the"] for g in greedy]  # the greedy continuation is a choice: is_greedy is true once
    docs = [{"question": q, "choices": c[i % 3:] + c[: i % 3], "answer": (3 - i % 3) % 3}
            for i, (q, c) in enumerate(zip(QUESTIONS, choices))]
    docs.append({"question": LONG, "choices": [" to", " the", "xqz"], "answer": 1})
    multiple_choice(folder, docs)
    context = local.model.config.context
    texts = [whole_contexts(local.tokenizer, t, context) for t in TEXTS]
    perplexity(folder, texts)
    generation(folder, [{"question": q, "answer": g} for q, g in zip(QUESTIONS, greedy)])
    newline = local.tokenizer.encode("\n")
    assert len(newline) == 1
    export = folder / "export"
    blu_command("export", "--run", run, "--format", "hf", "--out", export)
    with Server(run) as server:
        api = run_lm_eval(folder, "local-completions", (
            f"base_url={server.url}/v1/completions,model={run.name},tokenizer_backend=remote,"
            f"custom_prefix_token_id={newline[0]},max_length={context + 2}"), ["blu_mc", "blu_ppl", "blu_gen"])
    hf = run_lm_eval(folder, "hf", f"pretrained={export},dtype=float32,max_length={context},prefix_token_id={newline[0]}",
                     ["blu_mc", "blu_ppl"], "--device", "cpu")
    evals = []
    for i, text in enumerate(texts):
        path = folder / f"text{i}.txt"
        path.write_text("\n" + text, encoding="utf-8")
        assert local.tokenizer.encode("\n" + text) == newline + local.tokenizer.encode(text)
        evals.append(json.loads(blu_command("eval", "--run", run, "--data", path, "--json")))
    return {"kind": kind, "local": local, "api": api, "hf": hf, "evals": evals, "texts": texts}


def whole_contexts(tokenizer, text: str, context: int) -> str:
    """The longest start of `text`, ending in a visible character, that is a whole number of contexts in tokens."""
    for end in range(len(text), 0, -1):
        if not text[end - 1].isspace() and len(tokenizer.encode(text[:end])) % context == 0:
            return text[:end]
    raise AssertionError(f"no start of {text!r} is a whole number of contexts")


def blu_command(*args) -> str:
    """`blu ARGS...` as a user runs it; its stdout."""
    done = subprocess.run([sys.executable, "-m", "blu", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def resps(sample) -> list[tuple[float, bool]]:
    return [(float(ll), greedy == "True") for ll, greedy in sample["filtered_resps"]]


def test_multiple_choice_is_the_hf_export_per_item(scored):
    """Every choice's log-likelihood through `blu serve` is the hf model's on the export within
    1e-4, is_greedy the same, and so the accuracy; guards against ids split differently at the
    context/continuation seam, a BOS one side adds, or a long context cut differently."""
    diffs = []
    for ours, theirs in zip(scored["api"]["blu_mc"], scored["hf"]["blu_mc"]):
        assert ours["doc"] == theirs["doc"]
        a, b = resps(ours), resps(theirs)
        assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=1e-4)
        assert [g for _, g in a] == [g for _, g in b]
        diffs += [abs(x - y) for (x, _), (y, _) in zip(a, b)]
    assert any(g for s in scored["api"]["blu_mc"] for _, g in resps(s)), "a greedy continuation is among the choices"
    assert scored["api"]["results"]["blu_mc"]["acc,none"] == scored["hf"]["results"]["blu_mc"]["acc,none"]
    print(f"{scored['kind']}: acc {scored['api']['results']['blu_mc']['acc,none']}, max |diff| {max(diffs):.2e}")


def test_perplexity_is_the_hf_export_and_blu_eval(scored):
    """A loglikelihood_rolling task: each text's total log-likelihood through `blu serve` is the
    hf model's and `blu eval`'s (val_loss x tokens, of the same text after a newline, in windows
    of one context) within 1e-4 nats over the whole text (64 to 160 float32 log-probabilities,
    summed in another order: measured within 3e-5); the harness's bits per byte is blu eval's
    val_bpb over the same bytes within 1e-5. Guards against windows that differ from blu eval's."""
    api, hf, evals = scored["api"]["blu_ppl"], scored["hf"]["blu_ppl"], scored["evals"]
    for ours, theirs, ev in zip(api, hf, evals):
        total = float(ours["filtered_resps"][0])
        assert total == pytest.approx(float(theirs["filtered_resps"][0]), abs=1e-4)
        assert total == pytest.approx(-ev["val_loss"] * ev["tokens"], abs=1e-4)
        print(f"{scored['kind']}: {ev['tokens']} tokens, serve {total:.6f}, hf {float(theirs['filtered_resps'][0]):.6f}, "
              f"blu eval {-ev['val_loss'] * ev['tokens']:.6f}")
    bits = sum(ev["val_bpb"] * ev["bytes"] for ev in evals) / sum(ev["bytes"] for ev in evals)
    assert sum(ev["bytes"] for ev in evals) == sum(len(t.encode("utf-8")) for t in scored["texts"])
    assert scored["api"]["results"]["blu_ppl"]["bits_per_byte,none"] == pytest.approx(bits, abs=1e-5)
    assert scored["hf"]["results"]["blu_ppl"]["bits_per_byte,none"] == pytest.approx(bits, abs=1e-5)


def test_generate_until_stops_and_is_blu_generate(scored):
    """generate_until through `blu serve` (greedy, stopped at a newline): each answer is blu's
    own greedy generation with that stop, for every tokenizer kind."""
    local = scored["local"]
    for sample in scored["api"]["blu_gen"]:
        expected = "".join(local.generate(sample["doc"]["question"], max_new_tokens=12, temperature=0.0, seed=0,
                                          stop=["\n"]))
        assert sample["filtered_resps"][0] == expected and "\n" not in expected
