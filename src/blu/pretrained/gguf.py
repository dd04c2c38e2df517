"""A GGUF file of llama.cpp's `llama` architecture, read as blu's model configuration, weights and tokenizer.

The `gguf` package (llama.cpp's own Python reader) reads the metadata and the tensors and
dequantizes every type it knows (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants)
to float32 with numpy. llama.cpp's converter interleaved each head's query and key rows for its
rotary pairing (export/gguf.py writes them so); they are put back in transformers' order, and
from there the tensors take the same road as a Hugging Face folder's (hf.py).

The tokenizer is rebuilt from `tokenizer.ggml.*` (gguf_tokenizer.py).
"""

from pathlib import Path

import gguf
import numpy as np
import torch

from ..config import ModelConfig
from ..errors import BluError
from ..export.gguf import GGUF_TENSORS, gguf_name
from ..tokenizers.pretrained import PretrainedTokenizer
from .gguf_tokenizer import gguf_tokenizer
from .hf import blu_weights


def read_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], PretrainedTokenizer]:
    """The configuration, blu's weights and the tokenizer of a llama GGUF file, or a one-line refusal."""
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError) as error:
        raise BluError(f"{path} is not a GGUF file gguf can read ({str(error)[:120]})") from None
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise BluError(f"{path}: general.architecture = {arch!r}; only llama can be imported")
    tokenizer = gguf_tokenizer(path, meta)
    config = _config(path, meta, tokenizer.vocab_size, tied="output.weight" not in {t.name for t in reader.tensors})
    tensors = {}
    for tensor in reader.tensors:
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise BluError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which gguf cannot dequantize") from None
        tensors[tensor.name] = torch.from_numpy(np.array(array, dtype=np.float32)  # a copy: the map is read-only
                                                .reshape(list(reversed(tensor.shape.tolist()))))
    return config, blu_weights(_transformers_tensors(tensors, config), config), tokenizer


def _config(path: Path, meta: dict, vocab_size: int, tied: bool) -> ModelConfig:
    def get(key, default=None):
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise BluError(f"{path} has no llama.{key}")
        return value

    if (scaling := meta.get("llama.rope.scaling.type", "none")) != "none":
        raise BluError(f"{path}: llama.rope.scaling.type = {scaling!r} is not supported (blu's rotary has no scaling)")
    dim, heads = int(get("embedding_length")), int(get("attention.head_count"))
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if int(meta.get(f"llama.{key}", dim // heads)) != dim // heads:
            raise BluError(f"{path}: llama.{key} = {meta[f'llama.{key}']} is not supported (blu's is embedding_length / "
                           f"head_count = {dim // heads})")
    config = ModelConfig(vocab_size=vocab_size, dim=dim, n_layer=int(get("block_count")), n_head=heads,
                         n_kv_head=int(get("attention.head_count_kv", heads)), hidden_dim=int(get("feed_forward_length")),
                         context=int(get("context_length")), rope_theta=float(get("rope.freq_base", 10000.0)),
                         norm_eps=float(get("attention.layer_norm_rms_epsilon")), tie_embeddings=tied)
    config.validate()
    return config


def _transformers_tensors(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors under transformers' names, query and key rows back in transformers' order."""
    whole_model = [name for name in GGUF_TENSORS if name.startswith(("model.", "lm_head."))]
    per_layer = [f"model.layers.{i}.{name}" for i in range(config.n_layer) for name in GGUF_TENSORS
                 if name not in whole_model]
    hf_names = {gguf_name(name): name for name in whole_model + per_layer}
    out = {}
    for name, tensor in tensors.items():
        if name not in hf_names:
            raise BluError(f"the GGUF file has a tensor {name} that a Llama of this configuration lacks")
        if hf_names[name].endswith("q_proj.weight"):
            tensor = rotary_halves(tensor, config.n_head)
        elif hf_names[name].endswith("k_proj.weight"):
            tensor = rotary_halves(tensor, config.n_kv_head)
        out[hf_names[name]] = tensor
    return out


def rotary_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of export/gguf.py's rotary_pairs_adjacent: rows 2j and 2j + 1 of each head go
    back to row j of its first and of its second half."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
