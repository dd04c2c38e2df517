"""Export a run for other tools: Hugging Face transformers (hf.py) and llama.cpp's GGUF (gguf.py)."""

from .hf import export_hf, hf_config, hf_state_dict, hf_tokenizer, to_transformers

__all__ = ["export_hf", "hf_config", "hf_state_dict", "hf_tokenizer", "to_transformers"]
