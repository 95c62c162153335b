"""Rollout generation: G samples per prompt with token ids and behaviour log-probs, verified.

The flow of one batch, top to bottom (`generate_rollouts`):
  prompts (rendered chat text) ──► Generator.generate(n=G, seeds) ──► verifier(response, reference)
  ──► one Arrow row per sample in `datastore.schema.ROLLOUT_SCHEMA`.

Two generators implement the `Generator` protocol and return the same `Sample`s:
`HFGenerator` (`train/rollouts/hf_generator.py`: transformers, CPU or GPU) and `VLLMGenerator`
(`train/rollouts/vllm_generator.py`, imported lazily).

Conventions every backend keeps:
- `Sample.token_ids` are the sampled ids, including the final EOS token when the model stopped by
  itself (the policy chose to stop, so training sees that action); `Sample.text` is the decode of
  those ids without that final EOS (special tokens elsewhere are kept, so text and ids agree).
  A stop string stays in the text (and its tokens in the ids).
- `Sample.logprobs` are the log-probabilities (nats) of the sampled ids under the policy's *raw*
  distribution, softmax(logits) at temperature 1 — not under the temperature / top-k / top-p
  filtered distribution that was sampled from. This is what importance ratios need.
- Sampling is reproducible per rollout: sample j of a prompt with seed s depends only on
  (s, j, prompt) — not on which other prompts shared its batch — so a resumed run regenerates
  exactly what an uninterrupted run would have (`HFGenerator` samples with per-row Gumbel noise).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import pyarrow as pa

from datastore.ids import group_id_of, rollout_id_of, stable_hash
from datastore.schema import ROLLOUT_SCHEMA


@dataclass(frozen=True)
class Sampling:
    """How to sample. `temperature=0` means greedy; `top_k=0` and `top_p=1.0` mean no filtering;
    `max_new_tokens` counts response tokens; generation also stops at EOS and at any `stop` string."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Sample:
    """One sampled response. `finish_reason` is `stop` (EOS or stop string) or `length`."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to roll out. `prompt` is the rendered text the policy sees (chat template
    applied); `messages` its chat form when there is one; `reference` the privileged answer or
    solution the verifier compares against (never shown to the policy)."""

    prompt_id: str
    prompt: str
    reference: str
    messages: tuple[tuple[str, str], ...] | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False)


class Generator(Protocol):
    """Anything that samples `n` responses for each prompt text.

    `seeds[i]` fixes the randomness of prompt i: the same (prompt, seed, n, sampling) gives the
    same samples whatever else is in the batch."""

    model_name: str
    backend: str

    def generate(
        self, prompts: Sequence[str], *, n: int, sampling: Sampling, seeds: Sequence[int]
    ) -> list[list[Sample]]: ...


def sampling_json(sampling: Sampling, *, n: int, seed: int, backend: str) -> str:
    """The `sampling` column: everything that determines the samples, as canonical JSON."""
    return json.dumps({**sampling.to_dict(), "n": n, "seed": seed, "backend": backend}, sort_keys=True)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The per-prompt seed handed to generators (63-bit, from the run seed and the prompt id)."""
    return int(stable_hash("seed", seed, prompt_id), 16) & ((1 << 63) - 1)


def generate_rollouts(
    generator: Generator,
    prompts: Sequence[PromptRecord],
    *,
    n: int,
    sampling: Sampling,
    seed: int,
    verifier: str = "toy-int",
) -> pa.Table:
    """Sample `n` responses per prompt, verify each against the prompt's reference, and return
    `len(prompts) * n` rows in `ROLLOUT_SCHEMA` (annotation columns null)."""
    from train.rollouts.verify import get_verifier

    verify = get_verifier(verifier)
    samp = sampling_json(sampling, n=n, seed=seed, backend=generator.backend)
    groups = generator.generate(
        [p.prompt for p in prompts], n=n, sampling=sampling, seeds=[prompt_seed(seed, p.prompt_id) for p in prompts]
    )
    rows = []
    for p, samples in zip(prompts, groups, strict=True):
        if len(samples) != n:
            raise RuntimeError(f"generator returned {len(samples)} samples for prompt {p.prompt_id}, expected {n}")
        gid = group_id_of(p.prompt_id, generator.model_name, samp)
        messages = [{"role": r, "content": c} for r, c in p.messages] if p.messages is not None else None
        for j, s in enumerate(samples):
            reward, correct = verify(s.text, p.reference)
            rows.append(
                {
                    "rollout_id": rollout_id_of(gid, p.prompt_id, s.text, generator.model_name, j),
                    "prompt_id": p.prompt_id,
                    "group_id": gid,
                    "prompt": p.prompt,
                    "messages": messages,
                    "response": s.text,
                    "response_token_ids": s.token_ids,
                    "response_logprobs": s.logprobs,
                    "reward": reward,
                    "correct": correct,
                    "verifier": verifier,
                    "reference": p.reference,
                    "model": generator.model_name,
                    "sampling": samp,
                }
            )
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)
