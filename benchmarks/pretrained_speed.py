"""A pretrained model of real size on this CPU: SmolLM2-135M's shape (dim 576, 30 layers, 9 query
and 3 key/value heads, hidden 1,536, vocabulary 49,152, tied embeddings) with random weights,
saved by transformers as a Hugging Face folder, imported with `blu import`, and measured beside
references on the same weights in one process:

- import: seconds of the whole `blu import` command (a fresh process);
- generation, batch 1, greedy: blu against llama.cpp on blu's f32 GGUF export of the run, and
  beside its q8_0 export (the contenders alternate in rounds; both use --threads threads);
- evaluation: tokens/s of `blu.evaluate.evaluate` over --eval-tokens tokens against transformers'
  forward on the same rows (no gradient);
- training: tokens/s of blu's Transformer against transformers' LlamaForCausalLM, both loaded
  from the same folder, with the same fused AdamW and the same batches (train_speed.py's step).

    python benchmarks/pretrained_speed.py [--rounds 3] [--threads 2] [--smoke]

Speed does not depend on what the weights learned, so random ones serve; the tokenizer is a
byte-level BPE trained on tiny Shakespeare and filled up to the vocabulary with tokens no text
makes (their rows still cost what real rows cost: the head reads every row).
"""

import argparse
import json
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time

from common import SMOKE_HELP, save, shakespeare, table
from gguf_speed import blu_generation, llama_cpp_generation, timed_rounds
import llama_cpp
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import torch
from train_speed import steps_per_s
import transformers

import blu
from blu.evaluate import evaluate

SMOLLM2_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
SMOKE = dict(SMOLLM2_135M, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512, max_position_embeddings=256)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_bpe(vocab_size: int) -> Tokenizer:
    """A SmolLM2-style tokenizer of exactly `vocab_size` tokens: BPE trained on tiny Shakespeare,
    then unreachable filler tokens (no merge makes them) up to the size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([shakespeare().read_text(encoding="utf-8")], trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for i in range(vocab_size - len(vocab)):
        vocab[f"Ġfiller{i}"] = len(vocab)
    return Tokenizer.from_str(json.dumps(data))


def write_folder(folder: Path, settings: dict) -> None:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
    model.save_pretrained(folder)
    byte_level_bpe(settings["vocab_size"]).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIAL[0], "eos_token": SPECIAL[0]}))


def blu_cli(*args) -> float:
    """Seconds of one `blu` command in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blu", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_rate(seconds_per_item: list[float]) -> float:
    return 1 / statistics.median(seconds_per_item)


def generation(run: Path, folder: Path, args) -> list[dict]:
    for dtype in ("f32", "q8_0"):
        blu_cli("export", "--run", run, "--format", "gguf", "--dtype", dtype, "--out", folder / f"{dtype}.gguf")
    model = blu.load(run).model
    prompt = list(range(100, 108))
    contenders = {"blu": blu_generation(model, prompt, args.gen_tokens)}
    for dtype in ("f32", "q8_0"):
        llm = llama_cpp.Llama(str(folder / f"{dtype}.gguf"), n_ctx=256, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
        contenders[f"llama.cpp {dtype}"] = llama_cpp_generation(llm, prompt, args.gen_tokens)
    seconds = timed_rounds(contenders, args.gen_tokens, args.rounds)
    ours = median_rate(seconds["blu"])
    return [{"generation, batch 1": name, "tokens_per_s": median_rate(s), "blu / this": ours / median_rate(s),
             "rounds": ", ".join(f"{1 / v:,.1f}" for v in s)} for name, s in seconds.items()]


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Each contender's rate in each round, the contenders alternating (after one warm-up each)."""
    for fn in contenders.values():
        fn()
    rates = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            rates[name].append(fn())
    return rates


def evaluation(run: Path, folder: Path, args, hf_model) -> list[dict]:
    model = blu.load(run).model
    context, rows = 512, max(1, args.eval_tokens // 512)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, rows * context + 1, dtype=np.int64)

    def ours():
        start = time.perf_counter()
        scores = evaluate(model, tokens, batch_size=8)
        return scores.tokens / (time.perf_counter() - start)

    def theirs():
        x = torch.from_numpy(tokens[:-1].reshape(rows, context))
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, rows, 8):
                hf_model(x[i:i + 8]).logits.log_softmax(-1)
        return rows * context / (time.perf_counter() - start)

    rates = alternate({"blu evaluate": ours, "transformers forward": theirs}, args.rounds)
    return rows_of(rates, "evaluation", "transformers forward")


def training(run: Path, args, hf_model) -> list[dict]:
    model = blu.load(run).model.train()
    hf_model.train()
    B, T = args.batch, args.context
    torch.manual_seed(0)
    batches = [(torch.randint(0, model.config.vocab_size, (B, T)), torch.randint(0, model.config.vocab_size, (B, T)))
               for _ in range(args.train_steps)]
    contenders = {"blu Transformer": lambda: steps_per_s(model, lambda m, x: m(x), batches, 1e-4) * B * T,
                  "transformers LlamaForCausalLM": lambda: steps_per_s(hf_model, lambda m, x: m(x).logits, batches, 1e-4) * B * T}
    return rows_of(alternate(contenders, args.rounds), f"training, batch {B} x {T}", "transformers LlamaForCausalLM")


def rows_of(rates: dict, what: str, reference: str) -> list[dict]:
    base = statistics.median(rates[reference])
    return [{what: name, "tokens_per_s": statistics.median(r), "ratio to reference": statistics.median(r) / base,
             "rounds": ", ".join(f"{v:,.0f}" for v in r)} for name, r in rates.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and llama.cpp alike")
    parser.add_argument("--gen-tokens", type=int, default=100, help="tokens per generation round")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    settings = SMOLLM2_135M
    if args.smoke:
        settings, args.rounds, args.gen_tokens, args.eval_tokens, args.train_steps, args.context = SMOKE, 1, 8, 1024, 1, 64
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_folder(folder / "hf", settings)
        import_s = blu_cli("import", "--from", folder / "hf", "--out", folder / "run")
        print(f"blu import of {sum(f.stat().st_size for f in (folder / 'hf').iterdir()) / 1e6:,.0f} MB: {import_s:.1f} s")
        results = {"import_s": import_s, "generation": generation(folder / "run", folder, args)}
        print(table(results["generation"]))
        hf_model = transformers.LlamaForCausalLM.from_pretrained(folder / "hf", attn_implementation="sdpa")
        results["evaluation"] = evaluation(folder / "run", folder, args, hf_model.eval())
        print(table(results["evaluation"]))
        results["training"] = training(folder / "run", args, hf_model)
        print(table(results["training"]))
    print("wrote", save("pretrained_speed", {**results, "settings": settings, "args": vars(args)}, args.smoke))


if __name__ == "__main__":
    main()
