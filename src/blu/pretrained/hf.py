"""A Hugging Face folder of a LlamaForCausalLM, read as blu's model configuration and weights.

Nothing in the folder runs: config.json is JSON, weights are safetensors (one file, or shards
with their index), and a pickled pytorch_model.bin is read only by torch's `weights_only`
loader, which builds tensors and refuses anything else. What the Llama format allows and blu's
model cannot express is refused, naming the field and its value, before anything is written.
"""

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
import torch

from ..config import ModelConfig
from ..errors import BluError
from ..export.hf import HF_NAMES

# Fields whose only value blu's model computes; anything else changes what the model is.
MUST_BE = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
           "sliding_window": None, "use_sliding_window": False, "qk_norm": False}


def read_config(folder: Path) -> ModelConfig:
    """config.json as blu's ModelConfig, or a one-line refusal of what blu's model cannot be."""
    path = Path(folder) / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BluError(f"{folder} has no config.json: it is not a Hugging Face model folder") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BluError(f"{path} is not valid JSON ({error})") from None
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or "LlamaForCausalLM" not in architectures:
        raise BluError(f"{path}: only LlamaForCausalLM can be imported, this is model_type "
                       f"{hf.get('model_type')!r} ({', '.join(architectures) or 'no architectures'})")
    for field, allowed in MUST_BE.items():
        if hf.get(field, allowed) not in (allowed, None if allowed is False else allowed):
            raise BluError(f"{path}: {field} = {hf[field]!r} is not supported (blu's Llama has {field} = {allowed!r})")
    rope = hf.get("rope_parameters") or {}  # transformers 5 writes the rope settings here
    if rope.get("rope_type", "default") != "default":
        raise BluError(f"{path}: rope_parameters.rope_type = {rope['rope_type']!r} is not supported (only default rotary)")
    heads = hf.get("num_attention_heads")
    dim = hf.get("hidden_size")
    if isinstance(dim, int) and isinstance(heads, int) and heads and hf.get("head_dim", dim // heads) != dim // heads:
        raise BluError(f"{path}: head_dim = {hf['head_dim']} is not supported (blu's is hidden_size / "
                       f"num_attention_heads = {dim // heads})")
    config = ModelConfig(vocab_size=hf.get("vocab_size"), dim=dim, n_layer=hf.get("num_hidden_layers"), n_head=heads,
                         n_kv_head=hf.get("num_key_value_heads") or heads, hidden_dim=hf.get("intermediate_size"),
                         context=hf.get("max_position_embeddings"),
                         rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                         norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                         tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    config.validate()
    return config


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by transformers' names: model.safetensors, its shards, or
    (only through the weights-only loader) pytorch_model.bin and its shards."""
    folder = Path(folder)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index_name).is_file():
            try:
                weight_map = json.loads((folder / index_name).read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, UnicodeDecodeError) as error:
                raise BluError(f"{folder / index_name} is not a valid shard index ({error!r})") from None
            files = sorted(set(weight_map.values()))
        elif (folder / single).is_file():
            files = [single]
        else:
            continue
        tensors = {}
        for name in files:
            if Path(name).name != name:  # a shard index must not reach outside the folder
                raise BluError(f"{folder / index_name}: shard {name!r} is not a file of the folder")
            tensors.update(_read_file(folder / name))
        return tensors
    raise BluError(f"{folder} holds no model.safetensors, shards of it, or pytorch_model.bin")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as error:
            raise BluError(f"{path} is truncated or corrupt ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler refuses anything but tensors and plain containers
        raise BluError(f"{path} could not be read as plain tensors, and blu runs no code from a checkpoint "
                       f"({str(error).splitlines()[0][:160]})") from None
    if not isinstance(loaded, dict) or not all(isinstance(t, torch.Tensor) for t in loaded.values()):
        raise BluError(f"{path} is not a state dict of tensors")
    return loaded


def blu_weights(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' tensors renamed and fused into blu's (fp32), checked for completeness and shape."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # old files keep a buffer
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    weights, used = {}, set()
    for pattern, sources in HF_NAMES.items():
        if config.tie_embeddings and pattern == "output.weight":
            continue
        for layer in range(config.n_layer) if "{i}" in pattern else [None]:
            names = [s.format(i=layer) for s in sources]
            if missing := [n for n in names if n not in tensors]:
                raise BluError(f"the checkpoint has no tensor {missing[0]}")
            weights[pattern.format(i=layer)] = torch.cat([tensors[n].float() for n in names])
            used.update(names)
    if unexpected := sorted(set(tensors) - used):
        raise BluError(f"the checkpoint has tensors a Llama of this configuration lacks: "
                       f"{', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
    return weights

