"""What a fine-tune fits into: the default context and micro-batch of `blu train --init-from`
for a parent too large for the default batch (16 sequences of the parent's context) in memory.

A step's resident memory on a CPU is a fixed part (the process with torch loaded, the weights,
their gradients and the optimizer's state) and a part per token of a micro-batch (the
activations kept for the backward pass, and the logits with their log-softmax). Measured on
SmolLM2-135M's shape with Muon (BENCHMARKS.md, "Fine-tuning a 135M model: memory"), a step's
peak is 2.54, 2.82 and 3.95 GB at 1 x 256, 512 and 1,024 tokens; the estimate below, which counts
every tensor a block keeps, says 2.63, 3.14 and 4.15: it errs on the side of fitting.

The default keeps the tokens of a step (16 sequences): the micro-batch shrinks and gradient
accumulation makes up the rest, and the context is halved from the parent's only when even one
sequence does not fit. The user's --context, --batch-size and --grad-accum still win."""

from .config import ModelConfig

MEMORY_TARGET = 4_000_000_000  # bytes of resident memory a default fine-tune stays under (issue 20, part 5)
# The process before any model exists (torch and blu imported, the tokenizer and the text loaded),
# measured at 0.31 GB with SmolLM2's 49,152-token tokenizer; rounded up.
PROCESS_BYTES = 400_000_000
FLOAT = 4  # training runs in fp32 on a CPU


def optimizer_floats(config: ModelConfig, optimizer: str) -> int:
    """Floats of optimizer state: AdamW keeps two moments of every weight; Muon one momentum of
    the matrices inside the blocks and AdamW's two moments of the rest."""
    total = config.num_parameters()
    if optimizer != "muon":
        return 2 * total
    outer = config.vocab_size * config.dim * (1 if config.tie_embeddings else 2) + (2 * config.n_layer + 1) * config.dim
    return (total - outer) + 2 * outer


def activation_floats_per_token(config: ModelConfig) -> int:
    """Floats a training step keeps per token of its micro-batch: in each block the norms' inputs
    and outputs, q|k|v, the rotated queries and keys, attention's output (twice: before and after
    the head merge), the SwiGLU's gate|up, its activation and product; then the head's logits,
    their log-softmax and the gradient of the logits."""
    qkv = (config.n_head + 2 * config.n_kv_head) * config.head_dim
    block = 6 * config.dim + 2 * qkv + 4 * config.hidden_dim
    return config.n_layer * block + 3 * config.vocab_size


def training_bytes(config: ModelConfig, optimizer: str, micro_batch: int, context: int) -> int:
    """The estimated peak resident memory of a training step of `micro_batch` x `context` tokens."""
    fixed = PROCESS_BYTES + FLOAT * (2 * config.num_parameters() + optimizer_floats(config, optimizer))
    return fixed + FLOAT * micro_batch * context * activation_floats_per_token(config)


def fit_fine_tune(parent: ModelConfig, optimizer: str, sequences: int, context: int | None = None,
                  target: int = MEMORY_TARGET) -> tuple[int, int, int]:
    """(context, micro-batch, grad_accum) for a fine-tune of `parent` whose step takes `sequences`
    sequences: the given context or the longest of the parent's, its half, its quarter, ... (at
    least 64, or the parent's if shorter) at which one sequence fits under `target`; then the
    largest micro-batch that divides `sequences` and fits. Nothing fits: the shortest context at
    micro-batch 1 (the estimate errs high; the run may still fit)."""
    if context is None:
        context = parent.context
        while context > min(64, parent.context) and training_bytes(parent, optimizer, 1, context) > target:
            context //= 2
    micro = sequences
    while micro > 1 and (sequences % micro or training_bytes(parent, optimizer, micro, context) > target):
        micro -= 1
    return context, micro, sequences // micro
