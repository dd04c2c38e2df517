"""Small Hugging Face checkpoints made in the test, in the two tokenizer styles small Llamas ship
with, so that imports are tested against transformers without downloading anything."""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers


def smollm_style_tokenizer(text: str, vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE as SmolLM2 has it: end-of-text at id 0, the ChatML markers next."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def llama_style_tokenizer(text: str, vocab_size: int = 400) -> Tokenizer:
    """SentencePiece-style BPE as Llama 2 and TinyLlama have it: `▁` for spaces, a space put
    before the text, <unk> <s> </s> at 0-2, the 256 byte-fallback tokens next, <s> prepended."""
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    trained.train_from_iterator([text], trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    # As transformers' SentencePiece conversion writes them: every split of every token into two
    # tokens, in the order of the token they make (its score: here, its id), then of their ids.
    merges = [(token[:k], token[k:]) for token in sorted(vocab, key=vocab.get) for k in range(1, len(token))
              if token[:k] in vocab and token[k:] in vocab and vocab[token] >= 259]
    merges.sort(key=lambda m: (vocab[m[0] + m[1]], vocab[m[0]], vocab[m[1]]))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.normalizer = trained.normalizer
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def write_tokenizer_folder(folder: Path, tokenizer: Tokenizer, style: str) -> Path:
    """tokenizer.json, tokenizer_config.json and generation_config.json as the style's checkpoints have them."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if style == "smollm":
        config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                  "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}
        generation = {"bos_token_id": 0, "eos_token_id": [0, 2]}
    else:
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "legacy": False, "clean_up_tokenization_spaces": False}
        generation = {"bos_token_id": 1, "eos_token_id": 2}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


def write_llama_folder(folder: Path, tokenizer: Tokenizer, style: str, seed: int = 0, **change):
    """A random LlamaForCausalLM of a few layers saved by transformers, with the style's tokenizer
    files; returns the transformers model (eval mode) to compare with."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # its bars would mix with the stderr of the blu commands under test

    settings = dict(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=50000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=style == "smollm")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **change})).eval()
    model.save_pretrained(folder, **({"max_shard_size": "100KB"} if change.pop("sharded", False) else {}))
    write_tokenizer_folder(folder, tokenizer, style)  # after: save_pretrained writes its own generation_config.json
    return model


def write_sentencepiece_gguf(path: Path, tokenizer: Tokenizer, qtype: str, seed: int = 0) -> Path:
    """A llama GGUF file written with the gguf package's writer, as llama.cpp's converter writes a
    Llama 2-style model: the SentencePiece tokenizer as tokens, scores (the merge order: a later
    token scores lower) and types, no merges; random weights of a small Llama in `qtype`."""
    import gguf
    import numpy as np
    import torch

    from blu.config import ModelConfig
    from blu.export.gguf import gguf_tensors
    from blu.model import Transformer

    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    kinds = {"<unk>": gguf.TokenType.UNKNOWN, "<s>": gguf.TokenType.CONTROL, "</s>": gguf.TokenType.CONTROL}
    types = [kinds.get(t, gguf.TokenType.BYTE if t.startswith("<0x") and len(t) == 6 else gguf.TokenType.NORMAL)
             for t in tokens]
    config = ModelConfig(vocab_size=len(tokens), dim=64, n_layer=2, n_head=4, n_kv_head=2, hidden_dim=128, context=128,
                         rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False)
    torch.manual_seed(seed)
    model = Transformer(config)
    writer = gguf.GGUFWriter(path, "llama")
    for add, value in ((writer.add_context_length, config.context), (writer.add_embedding_length, config.dim),
                       (writer.add_block_count, config.n_layer), (writer.add_feed_forward_length, config.hidden_dim),
                       (writer.add_head_count, config.n_head), (writer.add_head_count_kv, config.n_kv_head),
                       (writer.add_rope_dimension_count, config.head_dim), (writer.add_rope_freq_base, config.rope_theta),
                       (writer.add_layer_norm_rms_eps, config.norm_eps)):
        add(value)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0 if i < 3 else -float(i) for i in range(len(tokens))])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    chosen = getattr(gguf.GGMLQuantizationType, qtype)
    for name, tensor in gguf_tensors(model).items():
        array = tensor.numpy()
        kind = chosen if tensor.dim() == 2 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(name, np.ascontiguousarray(gguf.quants.quantize(array, kind)), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
