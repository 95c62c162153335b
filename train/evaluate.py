"""Held-out evaluation of a policy folder: sampled and greedy accuracy, response length, entropy.

Used by `spanroute eval --model DIR` (any checkpoint: ``<run.out>/final``, the toy policy, a
converted model), by the demo and by the shipped-config no-collapse test, so a user can see
whether a run helped or hurt on the same problems.

- sampled accuracy: fraction of correct answers over ``n`` samples per prompt at temperature 1;
- greedy accuracy: one temperature-0 answer per prompt;
- response length: mean tokens per sampled response;
- entropy: mean negative log-prob of the sampled tokens at temperature 1 (nats / token), an
  unbiased estimate of the policy's per-token entropy along its own samples;
- ``stderr``: the binomial standard error of the sampled accuracy, √(p(1−p)/answers) — samples of
  one prompt are correlated, so the true error is somewhat larger.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def evaluate_records(generator: Any, records: Sequence[Any], *, n: int, max_new_tokens: int, seed: int,
                     verifier: str = "toy-int") -> dict[str, float]:
    """Metrics of `generator` (a `train.rollouts.generate.Generator`) on prompt `records`."""
    from train.rollouts.generate import Sampling, generate_rollouts

    sampled = generate_rollouts(generator, records, n=n, sampling=Sampling(temperature=1.0, max_new_tokens=max_new_tokens),
                                seed=seed, verifier=verifier)
    greedy = generate_rollouts(generator, records, n=1, sampling=Sampling(temperature=0.0, max_new_tokens=max_new_tokens),
                               seed=seed, verifier=verifier)
    lps = [x for row in sampled["response_logprobs"].to_pylist() for x in row]
    lengths = [len(x) for x in sampled["response_token_ids"].to_pylist()]
    acc = sum(sampled["correct"].to_pylist()) / max(sampled.num_rows, 1)
    return {
        "accuracy": acc,
        "greedy_accuracy": sum(greedy["correct"].to_pylist()) / max(greedy.num_rows, 1),
        "response_length": sum(lengths) / max(len(lengths), 1),
        "entropy": -sum(lps) / max(len(lps), 1),
        "n": sampled.num_rows,
        "prompts": len(records),
        "stderr": math.sqrt(acc * (1 - acc) / max(sampled.num_rows, 1)),
    }


def evaluate(policy: str | Path, problems: list, n: int, max_new_tokens: int, seed: int,
             device: str = "cpu", batch_size: int = 128) -> dict[str, float]:
    """`evaluate_records` of a policy folder on toy `problems` (``train.toy.make_problems``)."""
    import torch

    from train.rollouts.hf_generator import HFGenerator
    from train.toy import toy_prompt_records

    torch.manual_seed(seed)
    gen = HFGenerator.from_pretrained(str(policy), model_name="eval", device=device, batch_size=batch_size)
    return evaluate_records(gen, toy_prompt_records(problems, gen.tokenizer), n=n, max_new_tokens=max_new_tokens,
                            seed=seed)
