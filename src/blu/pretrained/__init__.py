"""Pretrained checkpoints made into run folders (`blu import`), so that every blu command works on them.

    hf.py    a Hugging Face LlamaForCausalLM folder: config.json, safetensors weights
    gguf.py  a llama.cpp GGUF file of the llama architecture, dequantized

The tokenizer is the checkpoint's own (tokenizers/pretrained.py, kind `hf`). An imported run
has the model, the tokenizer and their settings; it has no training text, so `blu eval` scores
it on a file given with --data.
"""

from pathlib import Path

from ..checkpoint import clear_run, save_model
from ..config import TrainConfig, to_dict
from ..errors import BluError
from ..files import atomic_write, write_json
from ..model import Transformer
from ..runs import FORMAT, holds_run
from ..tokenizers.pretrained import PretrainedTokenizer
from ..version import __version__
from . import gguf, hf


def import_checkpoint(source, out, force: bool = False, log=print) -> Path:
    """Make the run folder `out` from `source`, a Hugging Face folder or a GGUF file; return it.
    Everything is read and checked before anything is written; a run in `out` is kept unless `force`."""
    source, out = Path(source), Path(out)
    if holds_run(out) and not force:
        raise BluError(f"{out} already holds a run: add --force to replace it, or choose another --out")
    if source.is_dir():
        config, tokenizer = hf.read_config(source), PretrainedTokenizer.from_folder(source)
        weights, kind = hf.blu_weights(hf.read_tensors(source), config), "hf"
    elif source.is_file():
        (config, weights, tokenizer), kind = gguf.read_gguf(source), "gguf"
    else:
        raise BluError(f"--from {source}: no such folder or file (a Hugging Face model folder or a .gguf file)")
    if tokenizer.vocab_size != config.vocab_size:  # blu's run folders hold one vocabulary size for both
        raise BluError(f"{source}: the tokenizer has {tokenizer.vocab_size:,} tokens where the model has "
                       f"{config.vocab_size:,} embedding rows; blu imports only models whose two agree")
    model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "output.weight")}
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise BluError(f"{source}: tensor {name} has shape {tuple(weights[name].shape)} where its configuration "
                           f"says {tuple(shape)}")
    model.load_state_dict(weights, strict=False)
    log(f"importing {source}: {config.num_parameters():,} parameters, vocabulary {config.vocab_size:,}, "
        f"context {config.context:,}")
    meta = {"blu_version": __version__, "format": FORMAT, "preset": None, "tokenizer": tokenizer.kind,
            "model": to_dict(config), "train": to_dict(TrainConfig()), "data": None,
            "imported_from": {"path": str(source.resolve()), "format": kind}}
    if force:
        clear_run(out)
    save_model(out / "model.safetensors", model)
    atomic_write(out / "tokenizer.json", tokenizer.to_json().encode())
    write_json(out / "config.json", meta)  # last: a folder without it is not a run
    return out
