"""The toy policy's three capabilities, measured on held-out problems (DESIGN §8, issue #12).

1. plain prompts: sampled (T=1) and greedy accuracy;
2. privileged context through the trainer's own teacher prompts (`teacher_prompt_text`): greedy
   accuracy with `reference` on every problem; with `error_type`, `skill` and `reference+error` on
   the problems of the failed sampled rollouts, whose hints come from the rule annotator / rule
   skills exactly as the pipeline derives them, against plain on the same rollouts, greedy and
   sampled (T = 1, with a paired interval per hint);
3. self-annotation: the annotator prompts through `ApiAnnotator` + the in-process `GeneratorRunner`
   (what `spanroute annotate self --checkpoint` runs), against `annotate rule` on the same rollouts:
   the share of rows with spans, and of rows whose spans agree at character F1 ≥ 0.8.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from train.toy.problems import TOY_CHECK_SEED

AGREE_F1 = 0.8
HINT_TEMPLATES = ("error_type", "skill", "reference+error")  # compared with plain on failed rollouts


def _greedy_correct(gen, prompts: list[str], references: list[str]) -> list[bool]:
    from train.rollouts.generate import Sampling
    from train.rollouts.verify import toy_int

    outs = gen.generate(prompts, n=1, sampling=Sampling(temperature=0.0, max_new_tokens=48), seeds=[0] * len(prompts))
    return [toy_int(o[0].text, ref)[1] for o, ref in zip(outs, references, strict=True)]


def _mean(xs) -> float | None:
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def reference_accuracy(gen, problems) -> float:
    """Greedy accuracy under the trainer's `reference` teacher prompt (`teacher_prompt_text`)."""
    from train.teacher import teacher_prompt_text
    from train.toy.problems import toy_messages

    prompts = [teacher_prompt_text(gen.tokenizer, {"messages": toy_messages(p.question), "reference": p.reference},
                                   "reference") for p in problems]
    return _mean(_greedy_correct(gen, prompts, [p.reference for p in problems]))


def hint_accuracy(gen, rows: list[dict], samples: int = 4) -> tuple[dict, dict]:
    """On failed rollouts' problems, plain vs each hint template (rule hints): (greedy, sampled).

    greedy: accuracy of one greedy answer per failed rollout. sampled: accuracy of `samples`
    answers at T = 1 per failed rollout (the teacher's distribution, which is what distillation
    reads), and for each hint `<template>_minus_plain` = [mean, lo, hi], the paired 95% Student t
    interval of (hint − plain) accuracy over problems (a problem's failed rollouts share its plain
    prompt, so the problem is the unit; `train.stats.paired_diff_ci`)."""
    from train.rollouts.generate import Sampling
    from train.rollouts.verify import toy_int
    from train.stats import paired_diff_ci
    from train.teacher import teacher_prompt_text
    from train.toy.problems import toy_messages
    from train.toy.rule import rule_annotate
    from train.toy.skills import rule_skill

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r)
    failed = [r for r in rows if not r["correct"]]
    hinted = []
    for r in failed:
        _, etype = rule_annotate(r["response"], r["reference"], False)
        hinted.append({"messages": toy_messages(r["question"]), "reference": r["reference"],
                       "error_type": etype or "other", "skill": rule_skill(groups[r["prompt_id"]])})
    refs = [r["reference"] for r in failed]
    prompts = {"plain": [r["prompt"] for r in failed]}
    for template in HINT_TEMPLATES:
        prompts[template] = [teacher_prompt_text(gen.tokenizer, h, template) for h in hinted]
    greedy = {"rollouts": len(failed)}
    sampled: dict = {"rollouts": len(failed), "samples": samples}
    per_problem: dict[str, list[float]] = {}
    for template, ps in prompts.items():
        greedy[template] = _mean(_greedy_correct(gen, ps, refs))
        outs = gen.generate(ps, n=samples, sampling=Sampling(temperature=1.0, max_new_tokens=48),
                            seeds=list(range(len(ps))))
        hits = [sum(toy_int(o.text, ref)[1] for o in os_) / samples for os_, ref in zip(outs, refs, strict=True)]
        sampled[template] = _mean(hits)
        by_problem: dict[str, list[float]] = {}
        for r, h in zip(failed, hits):
            by_problem.setdefault(r["prompt_id"], []).append(h)
        per_problem[template] = [sum(v) / len(v) for v in by_problem.values()]
    if len(per_problem["plain"]) >= 2:  # an interval needs two problems
        for template in HINT_TEMPLATES:
            sampled[f"{template}_minus_plain"] = [round(x, 4) for x in paired_diff_ci(per_problem[template], per_problem["plain"])]
    return greedy, sampled


def self_annotation(gen, rows: list[dict], checkpoint: str) -> dict:
    """`annotate self` in process (ApiAnnotator + GeneratorRunner) vs `annotate rule` on `rows`."""
    from annotate.api import ApiAnnotator
    from annotate.engine import EngineConfig
    from annotate.local import GeneratorRunner
    from spans.agreement import agreement
    from train.toy.rule import rule_annotate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = EngineConfig(base_url="in-process", cache_path=Path(tmp) / "cache.sqlite", progress=False)
        ann = ApiAnnotator(cfg, checkpoint, source="self", checkpoint=checkpoint,
                           runner=GeneratorRunner(gen, cfg.cache_path))
        results = ann.annotate(rows)
    with_spans = agree = 0
    for r, res in zip(rows, results, strict=True):
        rule_spans, _ = rule_annotate(r["response"], r["reference"], bool(r["correct"]))
        if res.spans:
            with_spans += 1
            f1 = agreement([res.spans], [rule_spans], [r["response"]])["overall"].char_f1
            agree += int(f1 >= AGREE_F1)
    n = len(rows)
    return {"rows": n, "with_spans": round(with_spans / n, 4), "agree_f1_0.8": round(agree / n, 4),
            "correct_rows": sum(bool(r["correct"]) for r in rows)}


def sampled_rollouts(gen, problems, samples: int = 4) -> list[dict]:
    """`samples` rollouts per problem on the plain prompt at T = 1 (seed 0), verified, as rows
    with `question` (what `hint_accuracy` and `self_annotation` read)."""
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.toy.problems import toy_prompt_records

    question = {p.prompt_id: p.question for p in problems}
    table = generate_rollouts(gen, toy_prompt_records(problems, gen.tokenizer), n=samples,
                              sampling=Sampling(temperature=1.0, max_new_tokens=48), seed=0)
    return [dict(r, question=question[r["prompt_id"]]) for r in table.select(
        ["rollout_id", "prompt_id", "prompt", "response", "reference", "correct"]).to_pylist()]


def measure_policy(path: str | Path, n_problems: int = 200, samples: int = 4, n_annotate: int = 120,
                   seed: int = TOY_CHECK_SEED, progress: bool = True) -> dict:
    """All three capabilities of the policy folder `path` on `n_problems` problems of `seed`
    (a seed the build excludes). Fractions in [0, 1]; takes ~a minute or two on 2 cores."""
    from train.rollouts.hf_generator import HFGenerator
    from train.toy.problems import make_problems, toy_prompt_records

    t0 = time.time()
    say = (lambda m: print(f"toy policy: {m} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    gen = HFGenerator.from_pretrained(str(path), model_name="toy-eval", batch_size=128)
    problems = make_problems(n_problems, seed)
    rows = sampled_rollouts(gen, problems, samples)
    out = {"problems": f"{n_problems} from make_problems(seed={seed}), never trained on",
           "plain_sampled": _mean(r["correct"] for r in rows)}
    say(f"plain sampled accuracy {out['plain_sampled']}")
    refs = [p.reference for p in problems]
    out["plain_greedy"] = _mean(_greedy_correct(gen, [r.prompt for r in toy_prompt_records(problems, gen.tokenizer)], refs))
    out["reference_greedy"] = reference_accuracy(gen, problems)
    say(f"plain greedy {out['plain_greedy']}, reference-template greedy {out['reference_greedy']}")
    out["hints_on_failed_rollouts_greedy"], out["hints_on_failed_rollouts_sampled"] = hint_accuracy(gen, rows, samples)
    say(f"hints on failed rollouts: greedy {out['hints_on_failed_rollouts_greedy']}, "
        f"sampled {out['hints_on_failed_rollouts_sampled']}")
    first = [rows[i * samples] for i in range(min(n_annotate, n_problems))]  # one rollout per problem
    out["self_annotation"] = self_annotation(gen, first, str(path))
    say(f"self-annotation vs rule: {out['self_annotation']}")
    out["measure_seconds"] = round(time.time() - t0, 1)
    return out
