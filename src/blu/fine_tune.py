"""Starting a run from another run's weights (`blu train --init-from PARENT`), a blu run or an
imported one: the new run takes the parent's model and tokenizer, and has its own folder, text,
optimizer state, budget and schedule (config.FINE_TUNE gives the training defaults).

config.json records where its weights came from:

    init_from  {"path": the parent's folder (absolute), "weights_sha256": the SHA-256 of the
               parent's model.safetensors when the run was created}

so that a run stopped before its first save, which starts from the parent's weights again,
refuses a parent whose weights have changed since, rather than start from other ones.
Model flags that would change a weight's shape are refused; the context may be lowered (it
sets no weight's shape), never raised past what the parent was trained or published with.
Without --batch-size and --grad-accum, a step's sequences come in micro-batches (and, without
--context, a context) that fit in memory (memory_fit.py): an imported 135M model's 2,048
positions become 512, a micro-batch of 1 and 16 micro-steps."""

from dataclasses import replace
import hashlib
from pathlib import Path

from .chat_kinds import grown_rows
from .checkpoint import load_weights
from .config import FINE_TUNE, Budget, ModelConfig, TrainConfig, with_overrides
from .errors import BluError
from .memory_fit import fit_fine_tune
from .model import Transformer

# The ModelConfig fields that set the shape of some weight: a fine-tune keeps the parent's.
SHAPE_FIELDS = ("dim", "n_layer", "n_head", "n_kv_head", "hidden_dim", "tie_embeddings")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def fine_tune_configs(parent: ModelConfig, overrides: dict, budget: Budget) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configurations of a run started from `parent`'s weights: the
    parent's model with the overrides that keep its shapes (a context no longer than the
    parent's, dropout, rope_theta), and config.FINE_TUNE's training with the user's overrides
    (dataclass field names; None: not given) and `budget` (neither: FINE_TUNE's steps)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    changed = [name for name in SHAPE_FIELDS if name in overrides and overrides[name] != getattr(parent, name)]
    if changed:
        name = changed[0]
        raise BluError(f"{flag(name)} {overrides[name]} would change the shape of the parent's weights "
                       f"(its {name} is {getattr(parent, name)}): --init-from keeps the parent's model")
    context = overrides.get("context", parent.context)
    if context > parent.context:
        raise BluError(f"--context {context} is longer than the parent's {parent.context}: its model never saw "
                       "positions past that")
    if "batch_size" not in overrides and "grad_accum" not in overrides:
        # FINE_TUNE's sequences per step, in micro-batches (and a context) that fit in memory
        optimizer = overrides.get("optimizer", FINE_TUNE.train.optimizer)
        sequences = FINE_TUNE.train.batch_size * FINE_TUNE.train.grad_accum
        context, micro, accum = fit_fine_tune(parent, optimizer, sequences, overrides.get("context"))
        overrides = {**overrides, "context": context, "batch_size": micro, "grad_accum": accum}
    model = with_overrides(parent, {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS})
    iters = budget.iters if budget.given else FINE_TUNE.default_iters
    train = replace(with_overrides(FINE_TUNE.train, overrides), iters=iters or 0, time_s=budget.time_s or 0.0)
    model.validate()
    train.validate()
    return model, train


def weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise BluError(f"{path} is missing: the parent run has no weights") from None
    return digest.hexdigest()


def parent_record(folder) -> dict:
    """What config.json's "init_from" holds for a parent run folder."""
    folder = Path(folder).resolve()
    return {"path": str(folder), "weights_sha256": weights_sha256(folder / "model.safetensors")}


def load_parent_weights(model: Transformer, record: dict) -> None:
    """The parent's weights into `model`, refused if they are not the ones the run was created from."""
    if not (isinstance(record, dict) and isinstance(record.get("path"), str) and isinstance(record.get("weights_sha256"), str)):
        raise BluError("config.json: init_from should hold the parent's path and weights_sha256")
    path = Path(record["path"]) / "model.safetensors"
    if weights_sha256(path) != record["weights_sha256"]:
        raise BluError(f"{path} has changed since this run was created from it (its SHA-256 differs), and the run "
                       "has no save of its own yet: start it again with --init-from and --force")
    load_weights(model, path, grow=grown_rows)  # a chat fine-tune's new tokens get rows (chat_kinds.py)
