"""The files of a run folder: reading and writing them, atomically, as safetensors and JSON.

    config.json        model and training configuration, data source, blu version (its
                       fields are defined in runs.py)
    tokenizer.json     the tokenizer
    model.safetensors  best weights so far (by validation loss)
    last/state.safetensors
                       the latest full state for --resume: weights, optimizer
                       moments and RNG states as tensors, with the training state
                       (TrainState, below) as JSON in the file's metadata
                       (one file, so a single atomic rename keeps it consistent)
    metrics.jsonl, loss.png, samples.txt

No pickle anywhere: loading a run folder never executes code from it.
"""

from dataclasses import asdict, dataclass, fields
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
import torch

from .errors import BluError
from .files import atomic_file
from .model import Transformer


@dataclass
class TrainState:
    """How far a run has got: saved as JSON beside the weights in last/state.safetensors."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens consumed
    elapsed_s: float = 0.0  # wall-clock seconds of training and evaluation, from the first step
    best_val_loss: float | None = None  # the best validation loss so far: that of model.safetensors
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    processes: int = 1  # how many processes trained it: each step took batch_size x processes x grad_accum sequences
    evaluated: bool = True  # False: saved by a second Ctrl-C that skipped the evaluation of this step

    @classmethod
    def from_saved(cls, saved, path) -> "TrainState":
        """The state saved in `path`. Fields it lacks keep their defaults; other keys (older blu
        versions also saved loop variables, evaluated_step and faults_in_a_row) are ignored."""
        if not isinstance(saved, dict):
            raise BluError(f"{path} has no readable training state in its metadata")
        values = {f.name: saved[f.name] for f in fields(cls) if f.name in saved}
        for f in fields(cls):
            value = values.get(f.name, f.default)
            allowed = f.type if f.type in (int, bool) else (int, float, type(None)) if f.default is None else (int, float)
            if not isinstance(value, allowed) or (isinstance(value, bool) and f.type is not bool):
                raise BluError(f"{path}: the saved training state has a bad {f.name} ({value!r})")
        return cls(**values)


RUN_FILES = ("config.json", "tokenizer.json", "chat_template.jinja", "model.safetensors", "last", "metrics.jsonl",
             "loss.png", "samples.txt")


def remove_temporaries(run_dir: Path) -> None:
    """Delete what saves cut short by a kill left behind (atomic_write's temporary files)."""
    for name in RUN_FILES:
        for tmp in list(Path(run_dir).glob(f".{name}.*")) + list(Path(run_dir).glob(f"{name}/.*")):
            tmp.unlink()


def clear_run(run_dir: Path) -> None:
    """Remove the files of a previous run (for --force), leaving anything else in the folder."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        elif path.exists():
            path.unlink()


def model_tensors(model: Transformer, prefix: str = "") -> dict:
    """The weights to save; a tied output head is the embedding and is stored once."""
    tied = model.config.tie_embeddings
    return {prefix + k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "output.weight")}


def save_model(path: Path, model: Transformer) -> None:
    write_tensors(path, model_tensors(model), {"format": "pt"})


def write_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    """A safetensors file written atomically, straight from the tensors' memory: building its bytes
    first took a second copy of everything (1.3 GB more at a 135M fine-tune's save of last/)."""
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _read_tensors(path: Path, expected: dict) -> tuple[dict, dict]:
    """All tensors of a safetensors file and its metadata, after checking that every name in
    `expected` (a name -> shape map) is there with its shape, before anything is loaded."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            names = set(f.keys())
            for name, shape in expected.items():
                if name not in names:
                    raise BluError(f"{path} is incomplete: {name} is missing")
                if tuple(f.get_slice(name).get_shape()) != tuple(shape):
                    raise BluError(f"{path}: tensor {name} has shape {tuple(f.get_slice(name).get_shape())}, "
                                   f"the configuration says {tuple(shape)}")
            return {name: f.get_tensor(name) for name in names}, f.metadata() or {}
    except FileNotFoundError:
        raise BluError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise BluError(f"{path} is truncated or corrupt ({error})") from None
    except RuntimeError as error:  # safe_open sizes the file apart from reading its header: a
        # rename between the two (training saving while `blu serve` reloads) reads as a bad size
        raise BluError(f"{path} was replaced while it was read, or is corrupt ({error})") from None


VOCAB_ROWS = ("tok_embeddings.weight", "output.weight")  # one row per token


def load_weights(model: Transformer, path: Path, grow=None) -> None:
    """Load weights saved by `save_model`, checked against the model's shapes. `grow(weight,
    rows)`: the file may have fewer tokens than the model (a parent before the tokens a chat
    fine-tune adds), and its embedding and head are grown to the model's by that function."""
    expected = {k: v.shape for k, v in model_tensors(model).items()}
    tensors, _ = _read_tensors(path, {k: s for k, s in expected.items() if grow is None or k not in VOCAB_ROWS})
    for name in VOCAB_ROWS if grow is not None else ():
        if name in expected:
            have = tensors.get(name)
            if have is None or have.shape[1:] != expected[name][1:] or have.shape[0] > expected[name][0]:
                raise BluError(f"{path}: tensor {name} has shape {None if have is None else tuple(have.shape)}, "
                               f"the configuration says {tuple(expected[name])} (or fewer rows)")
            tensors[name] = grow(have, expected[name][0])
    model.load_state_dict({k: tensors[k] for k in expected}, strict=False)


def _optimizer_names(optimizer, model) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_last(run_dir: Path, model, optimizer, generators: dict, state: TrainState) -> None:
    """The full training state, in one file so that it is replaced atomically."""
    tensors = model_tensors(model, prefix="model.")
    names = _optimizer_names(optimizer, model)
    for index, per_param in optimizer.state_dict()["state"].items():
        for key, value in per_param.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    write_tensors(Path(run_dir) / "last" / "state.safetensors", tensors, {"state": json.dumps(asdict(state))})


def load_last(run_dir: Path, model, optimizer, generators: dict) -> TrainState:
    """Restore what `save_last` wrote into `model`, `optimizer` and `generators`; return the training state."""
    path = Path(run_dir) / "last" / "state.safetensors"
    weights = {k: v.shape for k, v in model_tensors(model, prefix="model.").items()}
    rng = {f"rng.{name}": generator.get_state().shape for name, generator in generators.items()}
    tensors, metadata = _read_tensors(path, {**weights, **rng})
    model.load_state_dict({k[len("model."):]: tensors[k] for k in weights}, strict=False)
    order = _optimizer_names(optimizer, model)
    shapes = dict(model.named_parameters())
    per_param = {}
    for key, value in tensors.items():
        if not key.startswith("optimizer."):
            continue
        name, field_name = key[len("optimizer."):].rsplit(".", 1)
        if name not in shapes or (value.dim() > 0 and value.shape != shapes[name].shape):
            raise BluError(f"{path}: optimizer state {name}.{field_name} does not fit the model")
        per_param.setdefault(order.index(name), {})[field_name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": optimizer.state_dict()["param_groups"]})
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.{name}"])
    try:
        saved = json.loads(metadata["state"])
    except (KeyError, ValueError):
        raise BluError(f"{path} has no readable training state in its metadata") from None
    return TrainState.from_saved(saved, path)
