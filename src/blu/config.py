"""Configuration: the model, training, text and sampling dataclasses, the budget and the named
presets. This is the only place where defaults live."""

from dataclasses import asdict, dataclass, field, fields, replace
import math

from .errors import BluError

OPTIMIZERS = ("muon", "adamw")
MAX_PARAMETERS = 2_000_000_000  # far beyond one modest GPU; refuses absurd shapes from a damaged config.json
TOKENIZER_KINDS = ("char", "byte", "bpe")  # the tokenizers a run builds from its training text (--tokenizer)
# The defaults come from BENCHMARKS.md ("Tokenizers on tiny Shakespeare"). In 150 s on a 2-core
# CPU, BPE of 512 or 1,024 tokens reaches 2.15 bits per byte where char and byte reach 2.27 and
# 4,096 reaches 2.20; 1,024 ties 512 and packs 20% more text per token: bpe for --data. But in the
# 2,000 steps of a plain `blu train`, BPE makes 20 passes over tiny Shakespeare's 411K tokens and
# overfits (best 2.22 at step 400) where char goes on to 2.15: char for tiny Shakespeare.
DEFAULT_TOKENIZER = "bpe"
DEFAULT_TOKENIZER_SHAKESPEARE = "char"
DEFAULT_BPE_VOCAB_SIZE = 1024
VAL_FRACTION = 0.1
# Evaluating the whole validation text at every evaluation must stay a small share of training.
MAX_VALIDATION_CHARS = 4_000_000


def _knob(default, help_text, choices=None):
    """A field the user may override from the command line (`--name-with-dashes`)."""
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0  # set from the tokenizer when a run starts
    dim: int = _knob(256, "width of the residual stream")
    n_layer: int = _knob(4, "number of transformer blocks")
    n_head: int = _knob(8, "number of query heads")
    n_kv_head: int = _knob(8, "key/value heads: fewer than n_head is grouped-query attention; "
                              "follows --n-head if only that is given")
    hidden_dim: int = _knob(512, "SwiGLU hidden width")
    context: int = _knob(64, "training context length in tokens")
    rope_theta: float = _knob(10000.0, "RoPE base frequency")
    norm_eps: float = 1e-5
    tie_embeddings: bool = _knob(False, "share the input embedding and the output head")
    dropout: float = _knob(0.0, "dropout on each block's two outputs while training (regularises small data)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def validate(self) -> None:
        """Refuse shapes the model cannot be built with (also guards configs read from disk)."""
        for name in ("vocab_size", "dim", "n_layer", "n_head", "n_kv_head", "hidden_dim", "context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 20:
                raise BluError(f"model {name} must be an integer between 1 and {1 << 20}, got {value!r}")
        if self.dim % self.n_head:
            raise BluError(f"dim {self.dim} must be divisible by n_head {self.n_head}")
        if self.head_dim % 2:
            raise BluError(f"head size dim/n_head = {self.head_dim} must be even for rotary embeddings")
        if self.n_head % self.n_kv_head:
            raise BluError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if not 0 <= self.dropout < 1:
            raise BluError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.rope_theta > 0:
            raise BluError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.num_parameters() > MAX_PARAMETERS:
            raise BluError(f"a model of {self.num_parameters():,} parameters is more than blu is built for ({MAX_PARAMETERS:,})")

    def num_parameters(self) -> int:
        """Counted from the shapes, so that a config read from disk is checked before anything is allocated."""
        attention = self.dim * (self.n_head + 2 * self.n_kv_head) * self.head_dim + self.n_head * self.head_dim * self.dim
        block = attention + 3 * self.dim * self.hidden_dim + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layer * block + self.dim + head


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _knob(16, "sequences per optimizer micro-step")
    grad_accum: int = _knob(1, "micro-steps accumulated per optimizer step")
    optimizer: str = _knob("muon", "muon for the matrices inside the blocks (AdamW for the rest), or adamw", OPTIMIZERS)
    lr: float = _knob(5e-4, "peak learning rate")
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    warmup_iters: int = _knob(100, "linear warmup steps")
    cooldown: float = _knob(0.3, "final fraction of the budget over which the lr decays linearly (1 = the whole run)")
    weight_decay: float = _knob(0.1, "decoupled weight decay on 2-D weights (Muon and AdamW)")
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = _knob(250, "steps between evaluations (there is always one at the end)")
    compile: bool = _knob(False, "torch.compile the model for training (about 13 s to compile on a 2-core CPU)")
    eval_batch_size: int = 64
    sample_chars: int = 200  # length of the sample written to samples.txt at each evaluation
    log_every: int = 10
    iters: int = 0  # optimizer steps; 0 = no step budget
    time_s: float = 0.0  # seconds of training from the first step (evaluations included); 0 = no time budget
    seed: int = 1337

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise BluError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("iters", "warmup_iters", "sample_chars"):
            if getattr(self, name) < 0:
                raise BluError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not self.weight_decay >= 0 or not self.time_s >= 0:
            raise BluError("lr must be positive and weight-decay and time non-negative")
        if not 0 < self.cooldown <= 1:
            raise BluError(f"cooldown must be in (0, 1], got {self.cooldown}")
        if self.optimizer not in OPTIMIZERS:
            raise BluError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.iters and not self.time_s:
            raise BluError("training needs a budget: --iters or --time")


@dataclass(frozen=True)
class Budget:
    """How long a run trains, as the user gave it (None: not given): `iters` optimizer steps or
    `time_s` seconds, whichever ends first. The clock starts at the first step, so that set-up
    (reading, tokenizing, compiling) is not taken from it; evaluations during training are.
    Neither: the preset's steps."""

    iters: int | None = None
    time_s: float | None = None

    def validate(self) -> None:
        if self.iters is not None and self.iters < 1:
            raise BluError(f"--iters must be at least 1, got {self.iters}")
        if self.time_s is not None and not self.time_s > 0:
            raise BluError(f"duration must be positive, got {self.time_s!r}")

    @property
    def given(self) -> bool:
        return self.iters is not None or self.time_s is not None


def _text_flag(default, help_text, kind=str, choices=None, metavar=None, repeatable=False):
    """A text setting and its flag: the flag's type, choices, metavar, whether it repeats, and its
    help (the command line adds the default where it is a plain value)."""
    return field(default=default, metadata={"help": help_text, "type": kind, "choices": choices, "metavar": metavar,
                                            "repeatable": repeatable})


@dataclass(frozen=True)
class TextSettings:
    """What text a run reads and how it is tokenized: the flags `blu train` and `blu prepare`
    share. config.json records them (runs.py), so a resumed run reads the same text."""

    data: str | None = _text_flag(None, "a UTF-8 text file, or a folder, .jsonl, .parquet or .gz of them, to train "
                                        "on (default: tiny Shakespeare, downloaded once)")
    val_data: str | None = _text_flag(None, "validate on this text (file or corpus) instead of a share of --data")
    ext: list[str] | None = _text_flag(None, "in a --data folder, read only files ending in SUFFIX (repeatable; "
                                             "default: every file)", metavar="SUFFIX", repeatable=True)
    text_field: str = _text_flag("text", "the JSONL field or Parquet column holding the text")
    skip_bad_files: bool = _text_flag(False, "leave out files that are not UTF-8 text (or bad JSONL/Parquet), "
                                             "listing them, instead of refusing the corpus", kind=bool)
    tokenizer: str | None = _text_flag(
        None, "bpe: a byte-level BPE trained on the training text (default with --data); char: one token per "
              "character (default for tiny Shakespeare); byte: the 256 UTF-8 bytes", choices=TOKENIZER_KINDS)
    vocab_size: int | None = _text_flag(None, f"tokens in a bpe vocabulary (default {DEFAULT_BPE_VOCAB_SIZE})", kind=int)
    tokenizer_from: str | None = _text_flag(None, "reuse the tokenizer of a run folder or a tokenizer.json",
                                            metavar="RUN_OR_FILE")
    val_fraction: float = _text_flag(VAL_FRACTION, "share of the text held out for validation, at most "
                                                   f"{MAX_VALIDATION_CHARS:,} characters", kind=float)

    def tokenizer_kind(self) -> str:
        """The kind of tokenizer to build: --tokenizer, or the default for this text."""
        return self.tokenizer or (DEFAULT_TOKENIZER if self.data is not None else DEFAULT_TOKENIZER_SHAKESPEARE)

    def validate(self) -> None:
        """Refuse settings that cannot go together, before any text is read (the tokenizer's own
        kind and size are checked by tokenizers.check_tokenizer_settings)."""
        if not 0 < self.val_fraction < 1:
            raise BluError(f"val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.tokenizer_from is not None and (self.tokenizer is not None or self.vocab_size is not None):
            raise BluError("--tokenizer-from reuses a tokenizer: give it without --tokenizer or --vocab-size")


@dataclass(frozen=True)
class Preset:
    description: str
    model: ModelConfig
    train: TrainConfig
    default_iters: int  # the budget when the user gives neither --iters nor --time
    # (seconds, {field: value}): values that measured better for a --time budget at least that
    # long; the user's own flags still win.
    long_budget: tuple[float, dict] | None = None


PRESETS = {
    "seed": Preset(
        "the original Blu: dim 256, 4 layers, 8 heads, context 64, batch 16, lr 5e-4",
        ModelConfig(dim=256, n_layer=4, n_head=8, n_kv_head=8, hidden_dim=512, context=64),
        TrainConfig(optimizer="adamw", batch_size=16, lr=5e-4, warmup_iters=100, weight_decay=0.1),
        default_iters=5000,
    ),
    "cpu": Preset(
        "small and quick for a laptop CPU",
        ModelConfig(dim=128, n_layer=4, n_head=4, n_kv_head=4, hidden_dim=384, context=128),
        TrainConfig(batch_size=32, lr=3e-3, warmup_iters=50, weight_decay=0.1, eval_every=200),
        default_iters=2000,
        # Tiny Shakespeare is 1M training characters: from 5 minutes on this model makes enough
        # passes over it to overfit (600 s: 1.517 without dropout, 1.468 with; 300 s: a tie).
        long_budget=(300, {"dropout": 0.1}),
    ),
    "gpu": Preset(
        "nanoGPT-sized for one GPU",
        ModelConfig(dim=384, n_layer=6, n_head=6, n_kv_head=6, hidden_dim=1024, context=256),
        TrainConfig(batch_size=64, lr=1e-3, warmup_iters=100, weight_decay=0.1, eval_every=250),
        default_iters=5000,
    ),
}


# `blu train --init-from`: the model is the parent's, the training this. Muon at 3e-3 fine-tuned best
# in BENCHMARKS.md ("Fine-tuning"), on an AdamW-pretrained parent too (2.25 against AdamW's best 2.37).
FINE_TUNE = Preset("fine-tuning another run's weights", ModelConfig(),
                   TrainConfig(optimizer="muon", batch_size=16, lr=3e-3, warmup_iters=20, weight_decay=0.0, eval_every=50),
                   default_iters=150)


DEFAULT_MAX_NEW_TOKENS = 500


@dataclass(frozen=True)
class SamplingOptions:
    """How `blu generate` and `TextGenerator.generate` pick each next token."""

    temperature: float = _knob(0.8, "divides the logits: 0 = greedy, higher = more random")
    top_k: int = _knob(0, "keep the k likeliest tokens (0 = off)")
    top_p: float = _knob(0.9, "keep the smallest set of tokens whose probability reaches p, in (0, 1] (1 = off; "
                              "0.9 as in the original Blu)")
    min_p: float = _knob(0.0, "drop tokens less likely than this fraction of the likeliest, in [0, 1) (0 = off)")
    repetition_penalty: float = _knob(1.0, "> 1 discourages the tokens seen in the last repetition-window: their "
                                           "positive logits are divided by it, as in transformers (1 = off)")
    repetition_window: int = _knob(64, "how many recent tokens the repetition penalty looks at")

    def validate(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise BluError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise BluError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise BluError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise BluError(f"min-p must be in [0, 1), got {self.min_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise BluError(f"repetition-penalty must be positive (1 turns it off), got {self.repetition_penalty}")
        if self.repetition_window < 1:
            raise BluError(f"repetition-window must be at least 1, got {self.repetition_window}")


def knobs(cls) -> list:
    """The fields of a config dataclass that the command line may override."""
    return [f for f in fields(cls) if "help" in f.metadata]


def with_overrides(config, overrides: dict):
    """`config` with the non-None values of `overrides` that name its fields."""
    names = {f.name for f in fields(config)}
    return replace(config, **{k: v for k, v in overrides.items() if k in names and v is not None})


def configs_for(preset_name: str, overrides: dict, vocab_size: int, budget: Budget | None = None):
    """The model and training configurations of a new run: a preset, the user's overrides
    (dataclass field names; None = keep the preset's), and the budget (the preset's steps if none)."""
    preset = PRESETS[preset_name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    budget = budget or Budget()
    iters, time_s = budget.iters, budget.time_s
    if preset.long_budget and time_s and time_s >= preset.long_budget[0]:
        overrides = {**preset.long_budget[1], **overrides}
    if "n_head" in overrides and "n_kv_head" not in overrides:
        overrides = {**overrides, "n_kv_head": overrides["n_head"]}  # plain attention unless asked otherwise
    model = replace(with_overrides(preset.model, overrides), vocab_size=vocab_size)
    if not budget.given:
        iters = preset.default_iters
    train = replace(with_overrides(preset.train, overrides), iters=iters or 0, time_s=time_s or 0.0)
    model.validate()
    train.validate()
    return model, train


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, data: dict):
    """Rebuild a config dataclass from JSON, refusing unknown or mistyped keys."""
    if not isinstance(data, dict):
        raise BluError(f"{cls.__name__} in config.json is not an object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BluError(f"config.json has unknown {cls.__name__} keys: {', '.join(unknown)}")
    for name, value in data.items():
        expected = type(known[name].default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or (expected is not bool and isinstance(value, bool)):
            raise BluError(f"config.json: {cls.__name__}.{name} should be {expected.__name__}, got {value!r}")
    return cls(**{k: (float(v) if type(known[k].default) is float else v) for k, v in data.items()})
