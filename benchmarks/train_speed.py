"""Training tokens/s of blu against transformers' LlamaForCausalLM on the same
configuration, the same batches and the same AdamW (fused, as `blu train` uses it), in one process.

    python benchmarks/train_speed.py [--preset seed] [--steps 20] [--rounds 3] [--compile] [--profile] [--smoke]

The two alternate in rounds so that noise from a shared machine hits both alike.
--profile adds where blu's eager step spends its time (the profiler's top
operators) and the rate of the machine's fp32 matrix product at the model's shape.
"""

import argparse
from dataclasses import replace
import statistics
import time

from common import SMOKE_HELP, save, table
import torch
import torch.nn.functional as F
from torch.profiler import profile
import transformers

from blu.config import PRESETS, ModelConfig
from blu.export import hf_config
from blu.model import Transformer

SMOKE_MODEL = ModelConfig(vocab_size=66, dim=32, n_layer=1, n_head=2, n_kv_head=2, hidden_dim=64, context=32)


def steps_per_s(model, forward, batches, lr):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(forward(model, x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return len(batches) / (time.perf_counter() - start)


def where_time_goes(model, forward, batches, lr, tokens: int, config) -> dict:
    """Share of blu's step in matrix products, and the fp32 product rate at the block's shape."""
    with profile() as prof:
        steps_per_s(model, forward, batches, lr)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    x, w = torch.randn(tokens, config.dim), torch.randn(config.hidden_dim, config.dim)
    for _ in range(20):
        F.linear(x, w)
    start = time.perf_counter()
    for _ in range(200):
        F.linear(x, w)
    gflops = 2 * tokens * config.dim * config.hidden_dim * 200 / (time.perf_counter() - start) / 1e9
    mm_share = sum(e.self_cpu_time_total for e in ops if e.key == "aten::mm") / total
    print(f"matrix products: {mm_share:.0%} of the profiled step; fp32 product ({tokens} x {config.dim}) @ "
          f"({config.dim} x {config.hidden_dim}): {gflops:.0f} GFLOP/s")
    return {"mm_share": mm_share, "linear_gflops": gflops,
            "top_ops": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_step": e.count / len(batches)}
                        for e in ops[:10]]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time blu through torch.compile")
    parser.add_argument("--profile", action="store_true", help="also show where blu's eager step spends its time")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; with --profile")
    args = parser.parse_args()

    preset = PRESETS[args.preset]
    config = replace(preset.model, vocab_size=66)  # tiny Shakespeare: 65 characters + <unk>
    B = preset.train.batch_size
    if args.smoke:
        config, B, args.steps, args.rounds, args.profile = SMOKE_MODEL, 4, 3, 1, True
    T = config.context
    torch.manual_seed(0)
    batches = [(torch.randint(0, 66, (B, T)), torch.randint(0, 66, (B, T))) for _ in range(args.steps)]
    models = {
        "blu": (Transformer(config), lambda m, x: m(x)),
        "transformers": (transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(config), attn_implementation="sdpa")),
                         lambda m, x: m(x).logits),
    }
    if args.compile:
        compiled = Transformer(config)
        fast = torch.compile(compiled)
        models["blu, torch.compile"] = (compiled, lambda m, x: fast(x))
    for model, forward in models.values():  # warm up allocators and kernels (and compile)
        steps_per_s(model, forward, batches[:3], preset.train.lr)
    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, forward) in models.items():
            rates[name].append(steps_per_s(model, forward, batches, preset.train.lr) * B * T)
    rows = [{"implementation": name, "tokens_per_s": statistics.median(r), "rounds": ", ".join(f"{v:,.0f}" for v in r)}
            for name, r in rates.items()]
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]  # eager blu / transformers
    shape = "a tiny model (smoke)" if args.smoke else f"preset {args.preset}"
    print(f"{shape}: batch {B} x {T}, {Transformer(config).num_parameters():,} parameters")
    print(table(rows))
    print(f"blu / transformers: {ratio:.2f}x")
    result = {"rows": rows, "ratio": ratio, "batch": B, "context": T}
    if args.profile:
        result["profile"] = where_time_goes(*models["blu"], batches, preset.train.lr, B * T, config)
    print("wrote", save(f"train_speed_{args.preset}", result, args.smoke))


if __name__ == "__main__":
    main()
