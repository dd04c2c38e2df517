"""Batch-1 greedy generation speed of llama.cpp (through llama-cpp-python) on blu's GGUF export,
f32 and q8_0, beside blu on the same weights, in one process; and the files' sizes.

    python benchmarks/gguf_speed.py [--presets cpu seed] [--rounds 5] [--threads 2] [--smoke]

Each model is a preset's shape with random weights (speed does not depend on what the weights
learned) and tiny Shakespeare's character vocabulary. Every generation continues an 8-token
prompt to the end of the model's context, so neither side refills nor shifts (a longer text is
a refill for blu and past the trained context for llama.cpp); a timed round repeats it until
`--tokens` tokens. The contenders alternate within each round; both use `--threads` threads.
"""

import argparse
from dataclasses import replace
from pathlib import Path
import statistics
import tempfile
import time

from common import SMOKE_HELP, save, shakespeare, table
import llama_cpp
from safetensors.torch import save as safetensors_bytes
import torch

from blu.checkpoint import model_tensors
from blu.config import PRESETS, ModelConfig, SamplingOptions
from blu.decode import Decoder
from blu.export.gguf import write_gguf
from blu.generate import stream_tokens
from blu.model import Transformer
from blu.tokenizers import CharTokenizer

SMOKE_MODEL = ModelConfig(vocab_size=0, dim=64, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=128, context=32)


def blu_generation(model, prompt: list[int], steps: int):
    decoder = Decoder(model)  # folded once, as blu.load's TextGenerator keeps it (llama.cpp's load is not timed either)

    def run() -> int:
        return sum(1 for _ in stream_tokens(decoder, prompt, steps, SamplingOptions(temperature=0)))
    return run


def llama_cpp_generation(llm, prompt: list[int], steps: int):
    def run() -> int:
        llm.reset()  # no prompt reused from the last round
        count = 0
        for _ in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):  # greedy; llama-cpp-python's own loop
            count += 1
            if count == steps:
                return count
    return run


def timed_rounds(contenders: dict, tokens: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per generated token of each contender in each round, contenders alternating."""
    for fn in contenders.values():
        fn()  # warm-up
    seconds = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start, done = time.perf_counter(), 0
            while done < tokens:
                done += fn()
            seconds[name].append((time.perf_counter() - start) / done)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=["cpu", "seed"], choices=list(PRESETS))
    parser.add_argument("--tokens", type=int, default=1000, help="tokens generated per contender per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="threads for blu (torch) and llama.cpp alike")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    shapes = {preset: PRESETS[preset].model for preset in args.presets}
    if args.smoke:
        shapes, args.tokens, args.rounds = {"smoke": SMOKE_MODEL}, 50, 1

    torch.set_num_threads(args.threads)
    tokenizer = CharTokenizer.from_text(shakespeare().read_text(encoding="utf-8"))
    prompt = tokenizer.encode("ROMEO:\n")[:8]
    rows, temporary = [], tempfile.TemporaryDirectory(prefix="gguf_speed_")
    folder = Path(temporary.name)
    for preset, shape in shapes.items():
        torch.manual_seed(0)
        model = Transformer(replace(shape, vocab_size=tokenizer.vocab_size)).eval()
        steps = model.config.context - len(prompt)
        contenders = {f"blu {preset}": blu_generation(model, prompt, steps)}
        sizes = {"f32 (torch)": len(safetensors_bytes(model_tensors(model)))}  # a run folder's model.safetensors
        for dtype in ("f32", "q8_0"):
            path = folder / f"{preset}-{dtype}.gguf"
            write_gguf(path, preset, model, tokenizer, dtype)
            sizes[dtype] = path.stat().st_size
            llm = llama_cpp.Llama(str(path), n_ctx=model.config.context, n_threads=args.threads,
                                  n_threads_batch=args.threads, verbose=False)
            contenders[f"llama.cpp {preset} {dtype}"] = llama_cpp_generation(llm, prompt, steps)
        seconds = timed_rounds(contenders, args.tokens, args.rounds)
        # The median is the typical speed; on a shared machine the best round is the least disturbed one.
        for name, s in seconds.items():
            dtype = name.rsplit(" ", 1)[1] if name.startswith("llama.cpp") else "f32 (torch)"
            rows.append({"implementation": name, "parameters": model.num_parameters(), "context": model.config.context,
                         "weights": dtype, "file_bytes": sizes[dtype], "tokens_per_s": 1 / statistics.median(s),
                         "best_round": 1 / min(s)})
    temporary.cleanup()
    print(f"batch 1, greedy, {args.threads} threads, {args.rounds} rounds of {args.tokens} tokens per contender")
    print(table(rows))
    results = {"rows": rows, "threads": args.threads, "llama_cpp_python": llama_cpp.__version__}
    print("wrote", save(f"gguf_speed_threads{args.threads}", results, args.smoke))


if __name__ == "__main__":
    main()
