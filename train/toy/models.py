"""Tiny Qwen2 models for the toy tokenizer: random-init ones for tests, and the toy policy's shape."""

from __future__ import annotations


def model_config(tokenizer, layers: int, hidden: int, heads: int = 4, kv_heads: int = 2, max_positions: int = 1024):
    """A small Qwen2 config sized for the toy tokenizer: FFN 4×hidden, tied embeddings."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def tiny_model(tokenizer, layers: int = 2, hidden: int = 64, seed: int = 0):
    """A random-init `Qwen2ForCausalLM` (float32, eval mode) for unit tests; builds in < 1 s."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(model_config(tokenizer, layers, hidden)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
