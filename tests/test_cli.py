"""The `blu` command called as a user calls it: outputs, files, and one-line errors with exit code 2."""

import io
import json
from pathlib import Path
import subprocess
import sys

from conftest import TINY_MODEL_FLAGS
import pytest
import torch

from blu.metrics import MetricsLog


@pytest.fixture
def trained(tmp_path, small_corpus, cli, tiny_flags):
    run = tmp_path / "run"
    code, out, err = cli("train", "--data", small_corpus, "--out", run, "--iters", 20, *tiny_flags)
    assert code == 0, err
    assert out == ""  # training talks on stderr only
    return run


def test_train_writes_the_run_folder(trained):
    """`blu train` writes every file of the run folder, and config.json holds the flags given over the
    preset's values."""
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors", "last", "metrics.jsonl", "loss.png", "samples.txt"} <= names
    config = json.loads((trained / "config.json").read_text())
    assert config["model"]["dim"] == 32 and config["model"]["context"] == 64 and config["train"]["iters"] == 20
    assert config["train"]["lr"] == 3e-3 and config["preset"] == "cpu"


def test_generate_streams_prompt_and_text_only(trained, cli):
    """stdout holds the prompt and exactly --max-new-tokens characters; a seed repeats the text;
    temperature 0 is greedy (as top-k 1)."""
    code, out, err = cli("generate", "--run", trained, "--prompt", "ROMEO:", "--max-new-tokens", 100, "--seed", 1)
    assert code == 0
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 100 + 1  # + final newline
    assert cli("generate", "--run", trained, "--prompt", "ROMEO:", "--max-new-tokens", 100, "--seed", 1)[1] == out
    code, greedy, _ = cli("generate", "--run", trained, "--prompt", "ROMEO:", "--temperature", 0, "--max-new-tokens", 20)
    assert greedy == cli("generate", "--run", trained, "--prompt", "ROMEO:", "--temperature", 0, "--top-k", 1,
                         "--max-new-tokens", 20)[1]


def test_generate_without_prompt_uses_the_seed_prompts(trained, cli):
    """Without --prompt, the original Blu's four sample prompts are continued."""
    code, out, _ = cli("generate", "--run", trained, "--max-new-tokens", 10, "--seed", 0)
    assert code == 0
    for prompt in ("ROMEO: ", "HAMLET: To be, or not to be,", "Once upon a time", "The king"):
        assert prompt in out


def test_generate_drops_unknown_prompt_characters_and_says_so(trained, cli):
    """Prompt characters a char model never saw are dropped with a note on stderr, not an error or a
    silent <unk>."""
    code, out, err = cli("generate", "--run", trained, "--prompt", "ROMEO\u2603:", "--max-new-tokens", 5)
    assert code == 0 and "\u2603" in err and "dropping" in err


def test_generate_controls_from_the_command_line(trained, cli):
    """--stop ends the text before the stop string (not printed), and --num-samples, --min-p and
    --repetition-penalty reach generation."""
    base = ["generate", "--run", trained, "--prompt", "KING:", "--max-new-tokens", 150, "--temperature", 0]
    _, full, _ = cli(*base)
    stop = full[len("KING:") + 40 : len("KING:") + 42]
    _, cut, _ = cli(*base, "--stop", stop, "--stop", "never seen")
    assert cut == full[: full.index(stop, len("KING:"))] + "\n"
    code, out, _ = cli("generate", "--run", trained, "--prompt", "KING:", "--max-new-tokens", 30,
                       "--num-samples", 3, "--seed", 0, "--min-p", 0.05, "--repetition-penalty", 1.3)
    assert code == 0 and out.count("KING:") == 3 and len(out) == 3 * (5 + 30) + 2 * 2 + 1


def test_interactive_mode_reads_prompts_until_end_of_input(trained, cli, monkeypatch):
    """-i continues each line of stdin in turn and ends at end of input."""
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO:\nJULIET:\n"))
    code, out, _ = cli("generate", "--run", trained, "-i", "--max-new-tokens", 20, "--seed", 0)
    assert code == 0 and out.startswith("ROMEO:") and out.count("JULIET:") >= 1
    assert len(out) == len("ROMEO:") + 20 + 1 + len("JULIET:") + 20 + 1


def test_eval_stream_reports_losses_by_position(trained, cli):
    """`blu eval --stream` reports the loss by position bucket, from the two halves of the context to
    8x it."""
    code, out, _ = cli("eval", "--run", trained, "--stream", "--json")
    result = json.loads(out)
    assert code == 0 and result["context"] == 64
    assert [(b["from"], b["to"]) for b in result["buckets"]] == [(1, 32), (32, 64), (64, 128), (128, 256), (256, 512)]


def test_eval_json(trained, cli, small_corpus, tmp_path):
    """`blu eval --json` prints its fields (val_bpc for a char run), scores every validation target,
    and --data scores another file, counting its unknown characters."""
    code, out, _ = cli("eval", "--run", trained, "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"val_loss", "val_bpb", "val_bpc", "tokens", "bytes", "window", "unknown_chars",
                                         "tokenizer"}
    assert result["tokens"] == 6000 - 1  # the whole validation split
    other = tmp_path / "other.txt"
    other.write_text("To be, or not to be\u2603", encoding="utf-8")
    code, out, err = cli("eval", "--run", trained, "--data", other, "--json")
    assert code == 0 and json.loads(out)["tokens"] == 19 and "1 characters" in err


def test_export_loads_in_transformers_with_the_same_greedy_text(trained, tmp_path, cli):
    """An hf export of a char run loads in transformers, tokenizes a prompt one character a token, and
    continues it greedily exactly as `blu generate` does."""
    transformers = pytest.importorskip("transformers")
    out_dir = tmp_path / "hf"
    assert cli("export", "--run", trained, "--format", "hf", "--out", out_dir)[0] == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    prompt = "ROMEO:\nWhat say you, sir?  "
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == prompt and ids.shape[1] == len(prompt)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=64 - len(prompt), do_sample=False)
    theirs = tokenizer.decode(generated[0, ids.shape[1]:])
    code, ours, _ = cli("generate", "--run", trained, "--prompt", prompt, "--temperature", 0,
                        "--max-new-tokens", 64 - len(prompt))
    assert ours == prompt + theirs + "\n"


def test_export_refuses_an_existing_output_unless_forced(trained, tmp_path, cli):
    """`blu export` once overwrote an existing output without a word, where `blu train` refuses a
    used folder: one policy, a one-line error unless --force."""
    for fmt, out in (("hf", tmp_path / "hf"), ("gguf", tmp_path / "model.gguf")):
        assert cli("export", "--run", trained, "--format", fmt, "--out", out)[0] == 0
        before = sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir()))
        one_line_error(cli, "export", "--run", trained, "--format", fmt, "--out", out,
                       match=f"{out} already exists: add --force to replace it")
        assert sorted((p.name, p.stat().st_mtime_ns) for p in ([out] if out.is_file() else out.iterdir())) == before
        assert cli("export", "--run", trained, "--format", fmt, "--out", out, "--force")[0] == 0
    (tmp_path / "empty").mkdir()
    assert cli("export", "--run", trained, "--out", tmp_path / "empty")[0] == 0  # an empty folder holds nothing to lose


def test_a_byte_run_has_no_per_character_figures_and_counts_validation_tokens_as_eval_does(tmp_path, small_corpus, cli):
    """Bits per token were reported as val_bpc and "(N bits)" for byte and bpe runs, where they are
    not per character; and the training header counted one validation token more than `blu eval`
    (which counts the tokens it predicts, every one after the first)."""
    run = tmp_path / "byte"
    code, _, err = cli("train", "--data", small_corpus, "--out", run, "--iters", 2, "--tokenizer", "byte", *TINY_MODEL_FLAGS)
    assert code == 0, err
    code, out, _ = cli("eval", "--run", run, "--json")
    result = json.loads(out)
    assert code == 0 and "val_bpc" not in result
    assert f" / {result['tokens']:,} validation tokens" in err
    evaluations = [r for r in MetricsLog(run).rows() if "val_loss" in r]
    assert evaluations and all("val_bpb" in r and "val_bpc" not in r for r in evaluations)
    assert " nats/token after 2 steps" in err.splitlines()[-1] and "bits" not in err.splitlines()[-1]


def test_prepare_lists_what_the_cache_holds(tmp_path, small_corpus, cli, monkeypatch):
    """`blu prepare --list` prints one line per tokenized corpus (size, tokens, tokenizer, corpus,
    folder) on stdout and a count on stderr, before and after `blu prepare`."""
    monkeypatch.setenv("BLU_CACHE", str(tmp_path / "cache"))
    code, out, err = cli("prepare", "--list")
    assert code == 0 and out == "" and err.startswith(f"0 tokenized corpora in {tmp_path / 'cache' / 'tokens'}")
    code, _, err = cli("prepare", "--data", small_corpus, "--tokenizer", "char")
    assert code == 0 and "54,000 training and 5,999 validation tokens (char 60)" in err, err
    folder = err.split(" in ")[-1].strip()
    code, out, err = cli("prepare", "--list")
    assert code == 0 and err.startswith("1 tokenized corpora in")
    (line,) = out.splitlines()
    assert "60,000 tokens" in line and "char 60" in line and "small.txt" in line and line.endswith(folder)


def test_resume_continues_a_run(trained, cli):
    """--resume with a new --iters goes on from the saved state up to the new total."""
    code, _, err = cli("train", "--out", trained, "--resume", "--iters", 30)
    assert code == 0 and "resuming" in err
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30


def test_default_data_is_tiny_shakespeare_from_the_cache(blu_cache, tmp_path, cli, tiny_flags, monkeypatch):
    """Without --data, training runs offline on tiny Shakespeare from the cache, into
    runs/tinyshakespeare, and the header counts its split."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--iters", 2, *tiny_flags)
    assert code == 0, err
    assert (tmp_path / "runs" / "tinyshakespeare" / "model.safetensors").exists()
    assert "1,003,855 train / 111,538 validation" in err  # 111,539 validation characters: 111,538 predicted


def one_line_error(cli, *args, match):
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and match in err, err
    return err


def test_bad_training_input(tmp_path, cli, tiny_flags, small_corpus, trained):
    """Each bad input (empty, binary, non-UTF-8, too short or missing data; bad budgets or shapes;
    misused --resume or an occupied --out) is one line with exit code 2."""
    empty, binary, latin1, short = (tmp_path / n for n in ("empty.txt", "bin.txt", "latin1.txt", "short.txt"))
    empty.write_bytes(b"")
    binary.write_bytes(b"\x7fELF\x00\x00")
    latin1.write_bytes("café".encode("latin-1"))
    short.write_text("To be or not to be")
    out = ["--out", tmp_path / "new"]
    one_line_error(cli, "train", "--data", empty, *out, match="is empty")
    one_line_error(cli, "train", "--data", binary, *out, match="looks binary")
    one_line_error(cli, "train", "--data", latin1, *out, match="invalid byte 0xe9 at offset 3")
    one_line_error(cli, "train", "--data", short, *out, match="too short")
    one_line_error(cli, "train", "--data", tmp_path / "missing.txt", *out, match="no such file")
    one_line_error(cli, "train", "--data", small_corpus, "--time", "0", *out, match="duration must be positive")
    one_line_error(cli, "train", "--data", small_corpus, "--time", "soon", *out, match="bad duration")
    one_line_error(cli, "train", "--data", small_corpus, "--iters", "-3", *out, match="--iters must be at least 1")
    one_line_error(cli, "train", "--data", small_corpus, "--iters", "5", "--n-head", "5", *out, match="divisible")
    one_line_error(cli, "train", "--data", small_corpus, "--iters", "5", "--out", trained, match="already holds a run")
    one_line_error(cli, "train", "--resume", "--out", tmp_path / "nothing", match="no such run folder")
    one_line_error(cli, "train", "--resume", "--out", trained, "--lr", "1e-3", match="not --lr")
    one_line_error(cli, "train", "--resume", "--out", trained, "--data", small_corpus, match="not --data")
    one_line_error(cli, "train", "--resume", "--out", trained, "--seed", "0", "--force", match="not --seed, --force")
    one_line_error(cli, "train", "--resume", match="--resume needs --out")
    assert not (tmp_path / "new").exists()
    code, _, _ = cli("train", "--data", small_corpus, "--out", trained, "--iters", 2, "--force", *tiny_flags)
    assert code == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu(tmp_path, cli, small_corpus):
    """--device cuda on a machine without one is one clear line, not a CUDA traceback."""
    one_line_error(cli, "train", "--data", small_corpus, "--out", tmp_path / "r", "--device", "cuda", match="no CUDA device")


def test_bad_generation_and_run_folders(tmp_path, cli, trained):
    """Bad sampling values and damaged run folders (truncated, missing or corrupt files, another
    format) are each one line with exit code 2."""
    one_line_error(cli, "generate", "--run", trained, "--top-p", "0", match="top-p must be in (0, 1]")
    one_line_error(cli, "generate", "--run", trained, "--temperature", "-1", match="temperature must be >= 0")
    one_line_error(cli, "generate", "--run", trained, "--max-new-tokens", "-1", match="max-new-tokens")
    one_line_error(cli, "generate", "--run", tmp_path / "nowhere", match="no such run folder")
    one_line_error(cli, "generate", "--run", trained, "--bogus", match="unrecognized arguments")
    one_line_error(cli, "generate", "--run", trained, "--min-p", "1", match="min-p must be in [0, 1)")
    one_line_error(cli, "generate", "--run", trained, "--repetition-penalty", "0", match="repetition-penalty")
    one_line_error(cli, "generate", "--run", trained, "--num-samples", "0", match="num-samples")
    one_line_error(cli, "generate", "--run", trained, "--top-k", "-1", match="top-k")

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((trained / name).read_bytes())
    weights = (trained / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    one_line_error(cli, "generate", "--run", broken, match="truncated or corrupt")
    (broken / "model.safetensors").unlink()
    one_line_error(cli, "eval", "--run", broken, match="model.safetensors is missing")
    config = json.loads((trained / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "format": 99}))
    one_line_error(cli, "generate", "--run", broken, match="cannot read")
    (broken / "config.json").write_text("{not json")
    one_line_error(cli, "export", "--run", broken, "--out", tmp_path / "x", match="corrupt")


def test_the_installed_command_and_python_m(tmp_path):
    """Both the installed `blu` and `python -m blu` work, show defaults in --help, and exit 2 in one
    line on a bad run folder."""
    for command in ([str(Path(sys.executable).with_name("blu"))], [sys.executable, "-m", "blu"]):
        result = subprocess.run([*command, "train", "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "--time" in result.stdout and "(default: auto)" in result.stdout
    result = subprocess.run([sys.executable, "-m", "blu", "generate", "--run", str(tmp_path / "none")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_ctrl_c_in_interactive_mode_ends_only_the_current_continuation(trained, cli, monkeypatch):
    """In -i mode Ctrl-C ends the continuation being written, not the session: the next prompt is still
    answered."""
    from blu.generate import TextGenerator

    real = TextGenerator.generate

    def interrupted_after_one_piece(self, prompt="", **controls):
        pieces = real(self, prompt, **controls)

        def stream():
            yield next(pieces)
            if prompt == "ROMEO:":
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of a continuation
            yield from pieces

        return stream()

    monkeypatch.setattr(TextGenerator, "generate", interrupted_after_one_piece)
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO:\nJULIET:\n"))
    code, out, _ = cli("generate", "--run", trained, "-i", "--max-new-tokens", 20, "--seed", 0)
    assert code == 0
    assert len(out) == len("ROMEO:") + 1 + 1 + len("JULIET:") + 20 + 1 and "JULIET:" in out


def test_every_training_flag_reaches_the_run(tmp_path, small_corpus, cli):
    """Every model and training flag lands in config.json with its value: a flag parsed but never used
    would do nothing."""
    run = tmp_path / "run"
    code, _, err = cli("train", "--data", small_corpus, "--out", run, "--iters", 3, "--preset", "seed", "--dim", 32,
                       "--n-layer", 1, "--n-head", 4, "--n-kv-head", 2, "--hidden-dim", 48, "--context", 16,
                       "--rope-theta", 500, "--tie-embeddings", "--batch-size", 4, "--grad-accum", 2, "--lr", 1e-3,
                       "--warmup-iters", 7, "--weight-decay", 0.05, "--eval-every", 2, "--seed", 9,
                       "--optimizer", "muon", "--cooldown", 0.5, "--dropout", 0.1)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "seed"
    assert config["model"] == {"vocab_size": config["model"]["vocab_size"], "dim": 32, "n_layer": 1, "n_head": 4,
                               "n_kv_head": 2, "hidden_dim": 48, "context": 16, "rope_theta": 500.0,
                               "norm_eps": 1e-5, "tie_embeddings": True, "dropout": 0.1}
    train = config["train"]
    assert (train["batch_size"], train["grad_accum"], train["lr"], train["warmup_iters"], train["weight_decay"],
            train["eval_every"], train["seed"], train["iters"], train["optimizer"], train["cooldown"]
            ) == (4, 2, 1e-3, 7, 0.05, 2, 9, 3, "muon", 0.5)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 3]
    assert rows[-1]["tokens"] == 3 * 4 * 2 * 16  # steps x batch x accumulation x context


def test_a_time_budget_ends_on_time(tmp_path, small_corpus, cli, tiny_flags):
    """--time is a budget of wall-clock seconds: no step budget, training goes on until a step ends past
    it (and no further: every earlier logged step ended before it), then a last evaluation.
    test_train.py checks the stop step by step."""
    run = tmp_path / "run"
    assert cli("train", "--data", small_corpus, "--out", run, "--time", "3s", *tiny_flags)[0] == 0
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["time_s"], train["iters"]) == (3.0, 0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["elapsed_s"] >= 3.0 and "val_loss" in final
    assert all(r["elapsed_s"] < 3.0 for r in rows if r["step"] < final["step"])


def test_generate_flags_come_from_the_sampling_options(cli):
    """Each SamplingOptions field is a `blu generate` flag whose help says what it does and shows its
    default: guards against a control added to the dataclass but not to the command line."""
    from dataclasses import fields

    from blu.config import SamplingOptions

    code, out, _ = cli("generate", "--help")
    text = " ".join(out.split())  # argparse wraps lines
    assert code == 0
    for f in fields(SamplingOptions):
        flag = "--" + f.name.replace("_", "-")
        assert f"{flag} {f.name.upper()} {f.metadata['help']} (default: {f.default})" in text, flag
    assert "--max-new-tokens MAX_NEW_TOKENS how many tokens to generate (default: 500)" in text
