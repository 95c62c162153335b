"""transformers backend of the `Generator` protocol: `HFGenerator`, and the log-prob check every
backend is held to (`teacher_forced_logprobs`, `logprob_max_abs_diff`).

Sampling happens in a logits processor (`_SampleAndRecord`): per-row Gumbel-max with the row's own
`torch.Generator`, so sample j of a prompt depends only on (seed, prompt, j), and the recorded
log-probs are those of the raw distribution (nats, temperature 1) — the conventions of
`train.rollouts.generate`.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from datastore.ids import stable_hash
from train.rollouts.generate import Sample, Sampling


def _row_seed(prompt_seed_: int, index: int) -> int:
    return int(stable_hash("row", prompt_seed_, index), 16) & ((1 << 63) - 1)


def _filter_top_k_top_p(z_BV, top_k: int, top_p: float):
    import torch

    if top_k and top_k < z_BV.shape[-1]:
        kth = torch.topk(z_BV, top_k, dim=-1).values[:, -1:]
        z_BV = z_BV.masked_fill(z_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z_BV, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the first stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z_BV = z_BV.masked_fill(drop, float("-inf"))
    return z_BV


class _SampleAndRecord:
    """A logits processor that does the sampling itself and records raw log-probs.

    HF `generate` runs greedy (`do_sample=False`) with this as its only processor: it receives the
    raw float32 logits of each step, picks each row's token by Gumbel-max on the filtered,
    temperature-scaled logits with that row's own torch.Generator (so rows are independent of
    their batch), records log_softmax(raw logits)[token], and returns scores whose argmax is the
    chosen token."""

    def __init__(self, sampling: Sampling, generators: list, constraint=None):
        self.sampling = sampling
        self.generators = generators
        self.constraint = constraint  # train.rollouts.grammar.JsonConstraint or None
        self.logprobs_steps: list = []  # T tensors of [B]

    def __call__(self, input_ids, scores_BV):
        import torch

        logp_BV = torch.log_softmax(scores_BV.float(), dim=-1)  # raw: recorded whatever the mask
        if self.constraint is not None:
            scores_BV = self.constraint.mask(scores_BV)
        if self.sampling.temperature == 0:
            chosen_B = scores_BV.argmax(-1)
        else:
            z_BV = _filter_top_k_top_p(scores_BV.float() / self.sampling.temperature, self.sampling.top_k, self.sampling.top_p)
            V = scores_BV.shape[-1]
            u_BV = torch.stack([torch.rand(V, generator=g, device=g.device) for g in self.generators]).to(scores_BV.device)
            gumbel_BV = -torch.log(-torch.log(u_BV.clamp(1e-20, 1.0 - 1e-7)))
            chosen_B = (z_BV + gumbel_BV).argmax(-1)
        if self.constraint is not None:
            self.constraint.advance(chosen_B)
        self.logprobs_steps.append(logp_BV.gather(1, chosen_B[:, None]).squeeze(1))
        out_BV = torch.full_like(scores_BV, float("-inf"))
        return out_BV.scatter_(1, chosen_B[:, None], 0.0)


class HFGenerator:
    """transformers backend: batched, left-padded `generate` on CPU or GPU.

    `batch_size` is rows (prompt × sample) per forward batch; prompts are grouped by length to
    cut padding. Records follow the module conventions (raw log-probs, per-rollout seeds)."""

    backend = "hf"
    supports_json_schema = True  # generate(..., json_schemas=...): see train.rollouts.grammar

    def __init__(self, model, tokenizer, *, model_name: str, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))
        if not self.eos_ids:
            raise ValueError(f"model {model_name}: neither the tokenizer nor the generation config names an EOS token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_pretrained(cls, path: str, *, model_name: str | None = None, device: str | None = None,
                        dtype: str = "float32", batch_size: int = 64) -> "HFGenerator":
        """Load a model + tokenizer folder. `device` defaults to cuda when available, else cpu."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        return cls(model, tok, model_name=model_name or str(path), batch_size=batch_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def generate(self, prompts, *, n, sampling, seeds, json_schemas=None, reasoning=False):
        """`Generator.generate`, plus `json_schemas`: one JSON schema (dict or text) or None per
        prompt; a prompt's samples then decode only text its schema allows (llguidance, see
        `train.rollouts.grammar`; ValueError for a schema it cannot compile), after an optional
        `<think>…</think>` block if `reasoning`."""
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        enc = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows.sort(key=lambda r: (len(enc[r[0]]), r))  # similar lengths together: less padding
        out: list[list[Sample | None]] = [[None] * n for _ in prompts]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            schemas = None if json_schemas is None else [json_schemas[i] for i, _ in batch]
            samples = self._generate_batch([enc[i] for i, _ in batch], [_row_seed(seeds[i], j) for i, j in batch],
                                           sampling, schemas, reasoning)
            for (i, j), s in zip(batch, samples):
                out[i][j] = s
        return out  # type: ignore[return-value]

    def _generate_batch(self, prompt_ids: list[list[int]], row_seeds: list[int], sampling: Sampling,
                        schemas: list | None = None, reasoning: bool = False) -> list[Sample]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        dev = self.device
        P = max(len(x) for x in prompt_ids)
        input_ids = torch.tensor([[self.pad_id] * (P - len(x)) + x for x in prompt_ids], device=dev)
        attn = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in prompt_ids], device=dev)
        gen_dev = dev if dev.type == "cuda" else torch.device("cpu")
        generators = [torch.Generator(device=gen_dev).manual_seed(s) for s in row_seeds]
        constraint = None
        if schemas is not None and any(s is not None for s in schemas):
            from train.rollouts.grammar import JsonConstraint

            constraint = JsonConstraint(self.tokenizer, schemas, self.model.config.vocab_size, self.eos_ids,
                                        reasoning)
        proc = _SampleAndRecord(sampling, generators, constraint)
        cfg = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            stop_strings=list(sampling.stop) or None,
        )
        with torch.no_grad():
            seq = self.model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                generation_config=cfg,
                logits_processor=LogitsProcessorList([proc]),
                tokenizer=self.tokenizer if sampling.stop else None,
            )
        gen_BT = seq[:, P:].tolist()
        logp_BT = torch.stack(proc.logprobs_steps, dim=1).tolist() if proc.logprobs_steps else [[] for _ in gen_BT]
        return [self._finish(ids, lps, sampling) for ids, lps in zip(gen_BT, logp_BT)]

    def _finish(self, ids: list[int], lps: list[float], sampling: Sampling) -> Sample:
        """Cut one row where generation stopped (first EOS inclusive, or the token completing a stop
        string) — later positions are padding — and decode it."""
        cut, reason = len(ids), "length"
        for t, tok in enumerate(ids):
            if tok in self.eos_ids:
                cut, reason = t + 1, "stop"
                break
        if sampling.stop:
            k = _first_prefix_with_stop(self.tokenizer, ids[:cut], sampling.stop)
            if k is not None and k < cut:
                cut, reason = k, "stop"
            elif k is not None:
                reason = "stop"
        ids, lps = ids[:cut], lps[:cut]
        body = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        return Sample(text=text, token_ids=ids, logprobs=lps, finish_reason=reason)


def _first_prefix_with_stop(tokenizer, ids: list[int], stop: Sequence[str]) -> int | None:
    """The smallest k such that decode(ids[:k]) contains a stop string, or None (binary search:
    containment is monotone in k)."""
    def has(k: int) -> bool:
        text = tokenizer.decode(ids[:k], skip_special_tokens=False)
        return any(s in text for s in stop)

    if not ids or not has(len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if has(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def teacher_forced_logprobs(model, tokenizer, prompt: str, token_ids: Sequence[int]) -> list[float]:
    """log softmax(logits)[token] (nats, temperature 1) of each response token, from one plain
    forward pass over prompt + response: the reference the generators' log-probs must match."""
    import torch

    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + list(token_ids)], device=next(model.parameters()).device)
    with torch.no_grad():
        logits_TV = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()  # [T, V]
    lp = torch.log_softmax(logits_TV, -1).gather(1, ids[0, len(p_ids) :, None]).squeeze(1)
    return lp.tolist()


def logprob_max_abs_diff(model, tokenizer, table: pa.Table) -> float:
    """Largest |stored − teacher-forced| log-prob over every token of every row (nats)."""
    worst = 0.0
    for prompt, ids, lps in zip(
        table["prompt"].to_pylist(), table["response_token_ids"].to_pylist(), table["response_logprobs"].to_pylist()
    ):
        if not ids:
            continue
        ref = teacher_forced_logprobs(model, tokenizer, prompt, ids)
        worst = max(worst, max(abs(a - b) for a, b in zip(ref, lps)))
    return worst
