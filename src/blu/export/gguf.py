"""Export a run to one GGUF file that llama.cpp (and what is built on it) loads as a Llama.

The weights are Hugging Face's (hf.py) renamed to llama.cpp's tensor names, with the query and
key rows reordered: transformers rotates dimension i of a head with i + head_dim/2, llama.cpp's
Llama with i + 1, so each head's rows are interleaved the way llama.cpp's own converter
(convert_hf_to_gguf.py, `LlamaModel.permute`) does it. Matrices take the chosen dtype; the norm
gains stay f32, as the converter leaves them.

The tokenizer is written for llama.cpp's byte-level BPE (`gpt2` with the `gpt-2` pre-tokenizer,
whose regex is the one blu's byte and bpe tokenizers split text with); see gguf_vocab.py.
"""

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from ..checkpoint import model_tensors
from ..errors import BluError
from ..files import atomic_file, refuse_to_replace
from ..runs import load_run
from .gguf_vocab import gguf_vocab
from .hf import hf_state_dict


@dataclass(frozen=True)
class Dtype:
    matrices: gguf.GGMLQuantizationType  # what every 2-D weight is stored as
    file_type: gguf.LlamaFileType  # general.file_type, which llama.cpp prints and tools read
    block: int  # a row's length must be a multiple of this


DTYPES = {
    "f32": Dtype(gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32, 1),
    "f16": Dtype(gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, 1),
    "bf16": Dtype(gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16, 1),
    "q8_0": Dtype(gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, 32),
}

ARCH = "llama"
T = gguf.MODEL_TENSOR
# transformers name (per layer: after "model.layers.{i}.") -> llama.cpp tensor, from gguf's own table
GGUF_TENSORS = {
    "model.embed_tokens.weight": T.TOKEN_EMBD,
    "model.norm.weight": T.OUTPUT_NORM,
    "lm_head.weight": T.OUTPUT,  # absent when tied: llama.cpp then uses token_embd as the head
    "input_layernorm.weight": T.ATTN_NORM,
    "self_attn.q_proj.weight": T.ATTN_Q,
    "self_attn.k_proj.weight": T.ATTN_K,
    "self_attn.v_proj.weight": T.ATTN_V,
    "self_attn.o_proj.weight": T.ATTN_OUT,
    "post_attention_layernorm.weight": T.FFN_NORM,
    "mlp.gate_proj.weight": T.FFN_GATE,
    "mlp.up_proj.weight": T.FFN_UP,
    "mlp.down_proj.weight": T.FFN_DOWN,
}


def rotary_pairs_adjacent(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a query or key projection reordered per head from (first half, second half) to
    interleaved pairs: row j of the first half goes to 2j, row j of the second half to 2j + 1
    (convert_hf_to_gguf.py's `LlamaModel.permute`)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
        return gguf.TENSOR_NAMES[GGUF_TENSORS[rest]].format(bid=int(layer)) + ".weight"
    return gguf.TENSOR_NAMES[GGUF_TENSORS[hf_name]] + ".weight"


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names, in its layout, as float32."""
    config = model.config
    out = {}
    for name, tensor in hf_state_dict(model_tensors(model), config).items():
        if name.endswith("q_proj.weight"):
            tensor = rotary_pairs_adjacent(tensor, config.n_head)
        elif name.endswith("k_proj.weight"):
            tensor = rotary_pairs_adjacent(tensor, config.n_kv_head)
        out[gguf_name(name)] = tensor.detach().float().contiguous()
    return out


def check_dtype(tensors: dict[str, torch.Tensor], dtype: str) -> Dtype:
    if dtype not in DTYPES:
        raise BluError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    chosen = DTYPES[dtype]
    for name, tensor in tensors.items():
        if tensor.dim() == 2 and tensor.shape[1] % chosen.block:
            raise BluError(f"--dtype {dtype} needs rows of a multiple of {chosen.block} values, but {name} has rows of "
                           f"{tensor.shape[1]}; use f32, f16 or bf16")
    return chosen


def stored(tensor: torch.Tensor, dtype: Dtype) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor's bytes in the file and their type: 1-D gains in f32, matrices in `dtype`."""
    array = tensor.numpy()
    qtype = dtype.matrices if tensor.dim() == 2 else gguf.GGMLQuantizationType.F32
    return gguf.quants.quantize(array, qtype), qtype


def write_gguf(path: Path, name: str, model, tokenizer, dtype: str = "f32") -> None:
    """Write the GGUF file for `model` and `tokenizer` at `path` (as it is: see export_gguf)."""
    config = model.config
    tensors = gguf_tensors(model)
    chosen = check_dtype(tensors, dtype)
    vocab = gguf_vocab(tokenizer)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(name)
    writer.add_file_type(chosen.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.context)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)  # every dimension of a head is rotated
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab.write(writer)
    for tensor_name, tensor in tensors.items():
        data, qtype = stored(tensor, chosen)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(run_dir, out, dtype: str = "f32", force: bool = False) -> Path:
    """Write `out`, a GGUF of the run's best weights and its tokenizer; return its path.
    Everything is checked before the file is written, which happens atomically; a file already
    there is refused unless `force`."""
    out = Path(out)
    if out.is_dir():
        raise BluError(f"--out {out} is a folder; give the path of the .gguf file to write")
    refuse_to_replace(out, force)
    _, model, tokenizer = load_run(run_dir)
    with atomic_file(out) as tmp:
        write_gguf(tmp, Path(run_dir).resolve().name, model, tokenizer, dtype)
    return out
