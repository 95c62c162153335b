"""`spanroute demo`: the whole flow on the embedded toy world, arms compared over paired seeds.

1. the toy policy: ``train.toy.toy_policy()`` (built once and cached; the build counts as setup);
2. the starting policy's held-out metrics (the baseline); then for each seed, each arm from the same
   starting weights with the same budget: online rounds of generate → annotate → skills → datastore
   version → shards → train (`train.online`), and the same held-out evaluation of its final policy;
3. per arm the mean over seeds with a Student t 95% interval, each arm's paired difference to GRPO
   (`train.stats`), a table, ``results.md``, ``curves.png`` and ``summary.json``.

An arm is data: `ARMS` maps its name to config overrides (and, for ``trace-self``, the online
annotator), so a new arm is a new row. Held-out problems and the evaluation sampling seed are the
same for every policy, so seed-to-seed spread is training's, and differences are paired by seed. Entropy is the mean negative log-prob of
the sampled tokens at temperature 1 (nats/token), an unbiased estimate of the per-token entropy
along the policy's own samples.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from train.config import from_dict
from train.evaluate import evaluate

TRACE_BOTH = {"name": "trace", "key_channel": True, "error_channel": True}
# arm -> {"method": method overrides, "online": OnlineConfig overrides}
ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "grpo": {"method": {"name": "grpo"}},
    "trace-fkl": {"method": {"name": "trace-fkl"}},
    "trace-rkl": {"method": {"name": "trace-rkl"}},
    "trace": {"method": TRACE_BOTH},
    "trace-random": {"method": {"name": "trace-random", "key_channel": True, "error_channel": True}},
    "opd": {"method": {"name": "opd"}},
    "trace-self": {"method": TRACE_BOTH, "online": {"annotator": "self"}},
    "skill-sd": {"method": {"name": "skill_sd"}},
}
DEFAULT_ARMS = ("grpo", "trace")
EVAL_SEED = 1_000  # held-out sampling seed, the same for the baseline and every arm and seed


@dataclass(frozen=True)
class DemoConfig:
    """The demo's budget; every arm gets exactly this, on every seed."""

    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 4  # 16 steps per arm and seed
    prompts_per_round: int = 32
    group_size: int = 8
    steps_per_round: int = 4
    groups_per_step: int = 8
    micro_batch_size: int = 64
    lr: float = 5e-5  # toy policy v4: 1e-4 lowers greedy accuracy (0.805 -> 0.67 in 12 steps), 5e-5 raises both
    term_clip: float | None = 0.05  # TRACE's pointwise clip of each vocabulary KL term
    max_new_tokens: int = 48
    eval_problems: int = 200
    eval_samples: int = 4
    quick: bool = False  # a random tiny policy and a handful of steps: checks the plumbing only


QUICK = DemoConfig(seeds=(0, 1), rounds=1, prompts_per_round=4, group_size=4, steps_per_round=2,
                   groups_per_step=2, micro_batch_size=8, lr=1e-3, max_new_tokens=16, eval_problems=4,
                   eval_samples=2, quick=True)


def resolve_arms(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"all"`` → every arm of `ARMS`; a comma list or sequence → those arms, checked, in ARMS order,
    with ``grpo`` added (every comparison is against it). Raises ValueError naming unknown arms."""
    if isinstance(names, str):
        names = list(ARMS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: all, {', '.join(ARMS)}")
    wanted = set(names) | {"grpo"}
    return tuple(a for a in ARMS if a in wanted)


def train_config(arm: str, policy: str, out: Path, dc: DemoConfig, seed: int) -> Any:
    """The recipe config of one arm and seed (TRACE: λ 0.5 for 10 steps → 0 at 40 steps, clipped
    terms). Raises ValueError (from the config check) when the arm's method does not exist."""
    steps = dc.rounds * dc.steps_per_round
    method = {"kl_hold": min(10, steps), "kl_end": min(40, steps), "teacher_sync": "copy", "sync_every": 10,
              "term_clip": dc.term_clip, **ARMS[arm]["method"]}
    return from_dict({
        "model": {"path": policy},
        "data": {"groups_per_step": dc.groups_per_step, "micro_batch_size": dc.micro_batch_size, "seed": seed},
        "method": method,
        "optim": {"lr": dc.lr, "steps": steps, "seed": seed},
        "run": {"out": str(out), "device": "cpu", "checkpoint_every": 0},
    })


def check_arms(dc: DemoConfig, policy: str, out: Path) -> dict[str, str]:
    """{arm: one-line reason} for arms whose config this tree refuses (e.g. a method not built yet)."""
    bad = {}
    for arm in dc.arms:
        try:
            train_config(arm, policy, out / arm, dc, 0)
        except ValueError as e:
            bad[arm] = f"arm {arm!r} cannot run on this tree: {e}"
    return bad


def problems_for(dc: DemoConfig, seed: int) -> tuple[list, list]:
    """(training problems of `seed`, held-out problems): the held-out set is the same for every seed
    and arm (`TOY_EVAL_SEED`), and no training problem is in it."""
    from train.toy import TOY_EVAL_SEED, make_problems

    held_out = make_problems(dc.eval_problems, seed=TOY_EVAL_SEED)
    seen = {p.prompt_id for p in held_out}
    need = dc.rounds * dc.prompts_per_round
    train = [p for p in make_problems(need + len(held_out), seed=10_000 + seed) if p.prompt_id not in seen][:need]
    return train, held_out


def _policy(out: Path, dc: DemoConfig, policy: str | None, log: Callable[[str], None]) -> tuple[str, float]:
    t = time.perf_counter()
    if policy:
        return policy, 0.0
    if dc.quick:  # a random tiny policy: the plumbing, not the learning
        from train.toy import build_tokenizer, tiny_model

        d = out / "policy"
        tok = build_tokenizer(d)
        tiny_model(tok, layers=2, hidden=32, seed=0).save_pretrained(d)
        return str(d), time.perf_counter() - t
    from train.toy import toy_policy

    log("toy policy: the shipped one (a changed recipe is built once and cached: tens of CPU minutes)…")
    return str(toy_policy()), time.perf_counter() - t


def run_arm(arm: str, seed: int, policy: str, out: Path, dc: DemoConfig, train_problems: list,
            log: Callable[[str], None]) -> dict[str, Any]:
    """One arm on one seed: online rounds into ``out/<arm>/seed-<seed>``; returns its run facts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from train.online import OnlineConfig, online_rounds

    run_dir = out / arm / f"seed-{seed}"
    cfg = train_config(arm, policy, run_dir, dc, seed)
    oc = OnlineConfig(rounds=dc.rounds, prompts_per_round=dc.prompts_per_round, group_size=dc.group_size,
                      steps_per_round=dc.steps_per_round, max_new_tokens=dc.max_new_tokens, seed=seed,
                      store=str(out / "store"), name=f"{arm}-seed{seed}", **ARMS[arm].get("online", {}))
    t = time.perf_counter()
    with Progress(TextColumn(f"[bold]{arm:<12} s{seed}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as bar:
        task = bar.add_task(arm, total=cfg.optim.steps, info="")

        def tick(m: dict) -> None:
            bar.update(task, completed=m["step"] + 1,
                       info=f"reward {m['reward']:.2f} λ {m.get('lambda', 0.0):.2f} loss {m['loss']:+.3f}")

        res = online_rounds(cfg, oc, train_problems, on_step=tick,
                            log=lambda s: bar.console.print(f"  {s}") if s.startswith("round") else None)
    annotated = sum(r["annotated"] for r in res["rounds"])
    rollouts = sum(r["rollouts"] for r in res["rounds"])
    return {"steps": cfg.optim.steps, "train_seconds": round(time.perf_counter() - t, 1), "dir": str(run_dir),
            "annotated_rows": annotated, "rollouts": rollouts}


def run_demo(out: str | Path, dc: DemoConfig = DemoConfig(), *, policy: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every arm of `dc` on every seed into `out`; returns (and writes) the summary.

    Arms whose method this tree does not have are reported with their reason and skipped (the
    summary's ``failed``). Raises ValueError if `out` already holds an arm's run."""
    from train.demo_report import summarize, write_outputs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for a in dc.arms:
        if (out / a).exists() and any((out / a).iterdir()):
            raise ValueError(f"{out / a} already holds a run; choose a new --out (the demo compares fresh runs)")
    t_all = time.perf_counter()
    policy, policy_s = _policy(out, dc, policy, log)
    failed = check_arms(dc, policy, out)
    for msg in failed.values():
        log(f"[skipped] {msg}")
    runnable = [a for a in dc.arms if a not in failed]
    log(f"policy: {policy} ({policy_s:.0f} s); arms {', '.join(runnable)}; seeds {list(dc.seeds)}")
    per_seed: dict[str, list[dict]] = {a: [] for a in ["baseline", *runnable]}
    held_out = problems_for(dc, dc.seeds[0])[1]  # the same for every seed and arm

    def ev(p: str | Path) -> dict[str, float]:  # the same problems and sampling seed for every policy
        return evaluate(p, held_out, dc.eval_samples, dc.max_new_tokens, seed=EVAL_SEED)

    per_seed["baseline"].append({"seed": None, **ev(policy), "steps": 0})
    log(f"baseline: accuracy {per_seed['baseline'][0]['accuracy']:.3f}, greedy "
        f"{per_seed['baseline'][0]['greedy_accuracy']:.3f} ({len(held_out)} held-out problems)")
    for seed in dc.seeds:
        train_problems = problems_for(dc, seed)[0]
        for arm in runnable:
            facts = run_arm(arm, seed, policy, out, dc, train_problems, log)
            per_seed[arm].append({"seed": seed, **ev(Path(facts["dir"]) / "final"), **facts})
            log(f"seed {seed}: {arm} accuracy {per_seed[arm][-1]['accuracy']:.3f} ({facts['train_seconds']:.0f} s)")
    summary = summarize(per_seed)
    summary.update({"failed": failed, "seconds": round(time.perf_counter() - t_all, 1),
                    "policy_seconds": round(policy_s, 1), "policy": policy,
                    "config": {**asdict(dc), "arms": list(dc.arms), "seeds": list(dc.seeds)}})
    write_outputs(out, summary, log)
    return summary


def quick_config(**changes: Any) -> DemoConfig:
    return replace(QUICK, **changes)
