"""Export a run to a Hugging Face transformers folder (LlamaForCausalLM).

blu's model is Llama by construction, so the weights only change names. The tokenizer of a
byte or bpe run is already a `tokenizers` byte-level BPE file and is written as it is, with
its end-of-text token as the end-of-sequence token. A char run's becomes a `tokenizers` BPE
model with no merges (so every character is one token, <unk> the unknown one), no
pre-tokenizer and a Fuse decoder (so decoding joins the characters without inserting spaces),
written as plain JSON.

A run with a chat template (an imported one's, or the one a chat fine-tune gave: chat_kinds.py)
writes it as tokenizer_config.json's chat_template, with the tokens apply_chat_template needs:
ChatML's markers are added tokens of tokenizer.json, and generation_config.json stops at the
end-of-turn token as well as the end of text.
"""

import json
from pathlib import Path
import re

from safetensors.torch import save as safetensors_bytes

from ..chat_template import ChatFormat
from ..checkpoint import model_tensors
from ..errors import BluError
from ..files import atomic_write, refuse_to_replace
from ..model import fused_rows
from ..runs import load_run
from ..tokenizers import UNK
from ..tokenizers.bytelevel import END_OF_TEXT

# blu name -> transformers name(s); {i} is the layer index. Fused blu weights
# split along their rows into the transformers weights listed, in order.
HF_NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight",),
    "layers.{i}.attention_norm.weight": ("model.layers.{i}.input_layernorm.weight",),
    "layers.{i}.attention.qkv_proj.weight": (
        "model.layers.{i}.self_attn.q_proj.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
    ),
    "layers.{i}.attention.o_proj.weight": ("model.layers.{i}.self_attn.o_proj.weight",),
    "layers.{i}.ffn_norm.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
    "layers.{i}.feed_forward.gate_up_proj.weight": (
        "model.layers.{i}.mlp.gate_proj.weight",
        "model.layers.{i}.mlp.up_proj.weight",
    ),
    "layers.{i}.feed_forward.down_proj.weight": ("model.layers.{i}.mlp.down_proj.weight",),
    "norm.weight": ("model.norm.weight",),
    "output.weight": ("lm_head.weight",),
}


def hf_state_dict(tensors: dict, config) -> dict:
    """blu weights (as from checkpoint.model_tensors) renamed and split for LlamaForCausalLM."""
    split_rows = fused_rows(config)
    out = {}
    for name, tensor in tensors.items():
        layer = re.match(r"layers\.(\d+)\.", name)
        pattern = name.replace(layer.group(0), "layers.{i}.", 1) if layer else name
        targets = [t.format(i=layer.group(1)) if layer else t for t in HF_NAMES[pattern]]
        fused = name.split(".")[-2]
        pieces = tensor.split(split_rows[fused]) if len(targets) > 1 else (tensor,)
        out.update((t, p.contiguous()) for t, p in zip(targets, pieces))
    return out


def hf_config(config, end_id: int | None = None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers 5.x
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": end_id,
        "pad_token_id": None,
    }


def hf_tokenizer(tokenizer) -> dict:
    """tokenizer.json in the format of the `tokenizers` library: for an imported tokenizer, the
    checkpoint's own file; for byte and bpe, blu's own file as it is; for char, one made here (below)."""
    if tokenizer.kind == "hf":
        return tokenizer.original
    if tokenizer.kind != "char":
        return json.loads(tokenizer.to_json())
    vocab = {UNK: 0, **{c: i for c, i in tokenizer.stoi.items()}}
    unk = {"id": 0, "content": UNK, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [unk],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": UNK, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


def to_transformers(model):
    """The same weights in a transformers LlamaForCausalLM (needs transformers installed)."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(model.config)))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model_tensors(model), model.config), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_embeddings else set()):
        raise RuntimeError(f"weight names do not match transformers: {unexpected} {missing}")
    return hf.eval()


def export_hf(run_dir, out_dir, force: bool = False) -> Path:
    """Write a folder that AutoModelForCausalLM and AutoTokenizer load; return its path. A folder
    that already holds files is refused unless `force`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BluError(f"--out {out_dir} is a file, not a folder")
    refuse_to_replace(out_dir, force)
    _, model, tokenizer = load_run(run_dir)
    weights = hf_state_dict(model_tensors(model), model.config)
    atomic_write(out_dir / "model.safetensors", safetensors_bytes(weights, metadata={"format": "pt"}))
    if tokenizer.kind == "char":
        special = {"unk_token": UNK}
    elif tokenizer.kind == "hf":  # the checkpoint's own settings go back out
        special = {name: tokenizer.hf.id_to_token(index) for name, index in
                   (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.end_id)) if index is not None}
    else:  # the literal text "<|endoftext|>" stays text (split_special_tokens), as in blu
        special = {"eos_token": END_OF_TEXT}
    imported = {"add_bos_token": tokenizer.add_bos} if tokenizer.kind == "hf" else {}
    bos_id, stop_ids = (tokenizer.bos_id, tokenizer.stop_ids) if tokenizer.kind == "hf" else (None, tokenizer.end_id)
    end_of_turn = ChatFormat(tokenizer).end_of_turn if tokenizer.chat_template else None
    if end_of_turn is not None:  # generate() ends a reply at the template's end of turn too
        stop_ids = sorted({*(stop_ids if isinstance(stop_ids, list) else [stop_ids]), end_of_turn} - {None})
    # transformers' apply_chat_template encodes the rendering with the tokenizer's split_special_tokens:
    # True would make the template's markers text, so a run with a template leaves it False (and
    # a special token's text typed in a prompt becomes the token there, transformers' default).
    split = tokenizer.end_id is not None and not tokenizer.chat_template
    files = {
        "config.json": {**hf_config(model.config, tokenizer.end_id), "bos_token_id": bos_id},
        "generation_config.json": {"do_sample": False, "bos_token_id": bos_id, "eos_token_id": stop_ids},
        "tokenizer.json": hf_tokenizer(tokenizer),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast", **special, "split_special_tokens": split,
            "model_max_length": model.config.context, "clean_up_tokenization_spaces": False,
            **{k: v for k, v in imported.items() if v is not None},
            **({"chat_template": tokenizer.chat_template} if tokenizer.chat_template else {}),
        },
        "special_tokens_map.json": special,
    }
    for name, content in files.items():
        atomic_write(out_dir / name, json.dumps(content, indent=2, ensure_ascii=False).encode())
    return out_dir
