"""Platform defaults for vLLM engines (`engine_settings`), checked without vLLM: on CPU the KV cache
is a byte budget (a memory fraction there depends on what the process already holds), on GPU
vLLM's own fraction; what the caller passes always wins; stats logging is off unless asked."""

from __future__ import annotations

import pytest

from train.rollouts.cli import VLLM_CPU_EXAMPLE, VLLM_GPU_EXAMPLE
from train.rollouts.job import vllm_engine_args
from train.rollouts.vllm_generator import CPU_KV_CACHE_BYTES, engine_settings


@pytest.mark.parametrize(
    "given,cpu,expected",
    [
        ({}, True, {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True, "dtype": "float32",
                    "disable_log_stats": True}),
        ({"kv_cache_memory_bytes": 1 << 26}, True, {"kv_cache_memory_bytes": 1 << 26}),
        ({"gpu_memory_utilization": 0.2}, True, {"gpu_memory_utilization": 0.2, "kv_cache_memory_bytes": None}),
        ({"dtype": "bfloat16", "enforce_eager": False}, True, {"dtype": "bfloat16", "enforce_eager": False}),
        ({"disable_log_stats": False}, True, {"disable_log_stats": False}),
        ({}, False, {"kv_cache_memory_bytes": None, "gpu_memory_utilization": None, "enforce_eager": None,
                     "disable_log_stats": True}),
        ({"gpu_memory_utilization": 0.5}, False, {"gpu_memory_utilization": 0.5, "kv_cache_memory_bytes": None}),
    ],
)
def test_engine_settings_fit_the_platform_and_the_caller_wins(given, cpu, expected):
    got = engine_settings(given, cpu=cpu)
    for key, value in expected.items():
        assert got.get(key) == value, key


def test_help_examples_are_json_objects_and_bad_json_is_one_clear_error():
    import json

    assert json.loads(VLLM_CPU_EXAMPLE)["kv_cache_memory_bytes"] > 0
    assert 0 < json.loads(VLLM_GPU_EXAMPLE)["gpu_memory_utilization"] <= 1
    assert vllm_engine_args("float32", VLLM_CPU_EXAMPLE)["max_model_len"] == 512
    with pytest.raises(ValueError, match="--vllm-args is not JSON"):
        vllm_engine_args("float32", "{max_model_len: 5}")
    with pytest.raises(ValueError, match="must be a JSON object"):
        vllm_engine_args("float32", "[1]")
