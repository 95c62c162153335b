"""Models and settings for the `vllm` tests (run in .venv-vllm by .ci/vllm-cpu).

vLLM's CPU attention needs a head size >= 32 (`Unsupported CPU attention configuration: head_dim=16`
for the 64-wide, 4-head test model), so the vLLM test model is 64 wide with 2 heads (head size 32).
The KV cache is given in bytes: on CPU a `gpu_memory_utilization` fraction means a fraction of RAM
minus what the process already holds, which passes or fails with test order (DESIGN §9)."""

from __future__ import annotations

from pathlib import Path

KV_BYTES = 64 << 20  # 64 MiB: ~4k tokens of the tiny model; plenty for these tests


def vllm_tiny_dir(path: Path) -> Path:
    """Save a random 2-layer Qwen2 (hidden 64, 2 heads of 32, 1 KV head) with the toy tokenizer."""
    import torch
    from transformers import Qwen2ForCausalLM

    from train.toy import build_tokenizer, model_config

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = model_config(tok, 2, 64, heads=2, kv_heads=1)
    cfg.max_position_embeddings = 8192  # annotation prompts run to thousands of byte-level tokens
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
