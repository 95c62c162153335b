"""`spanroute demo`: the whole flow on the embedded toy world, GRPO against TRACE, honestly.

1. the toy policy: ``train.toy.toy_policy()`` (built once and cached; the build counts as setup);
2. baseline: sampled accuracy, greedy accuracy, response length and entropy on held-out problems;
3. for each method, from the same starting weights with the same seeds and the same budget:
   online rounds of generate → rule annotate → rule skills → datastore version → shards → train;
4. the same held-out evaluation of each trained policy, a table, a plot and ``summary.json``.

Entropy is estimated as the mean negative log-prob of the sampled tokens at temperature 1 (nats per
token), which is an unbiased estimate of the policy's per-token entropy along its own samples.
Whichever method wins is reported as it is; with one seed the sampled accuracy on
``eval_problems × eval_samples`` answers has a standard error of about √(p(1−p)/n).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from train.config import from_dict


@dataclass(frozen=True)
class DemoConfig:
    """The demo's budget; both methods get exactly this."""

    methods: tuple[str, ...] = ("grpo", "trace")
    rounds: int = 12
    prompts_per_round: int = 32
    group_size: int = 8
    steps_per_round: int = 4
    groups_per_step: int = 8
    micro_batch_size: int = 64
    lr: float = 3e-5  # 1e-4 collapsed both arms on the toy policy (see README: The demo)
    term_clip: float | None = 0.05  # TRACE's pointwise clip of each vocabulary KL term
    max_new_tokens: int = 48
    eval_problems: int = 200
    eval_samples: int = 4
    seed: int = 0
    quick: bool = False  # a random tiny policy and a handful of steps: checks the plumbing only


QUICK = DemoConfig(rounds=1, prompts_per_round=4, group_size=4, steps_per_round=2, groups_per_step=2,
                   micro_batch_size=8, lr=1e-3, max_new_tokens=16, eval_problems=4, eval_samples=2, quick=True)


def train_config(method: str, policy: str, out: Path, dc: DemoConfig) -> Any:
    """The recipe config of one demo arm (TRACE: both span channels, λ 0.5 for 10 steps → 0 at 40)."""
    steps = dc.rounds * dc.steps_per_round
    return from_dict({
        "model": {"path": policy},
        "data": {"groups_per_step": dc.groups_per_step, "micro_batch_size": dc.micro_batch_size, "seed": dc.seed},
        "method": {"name": method, "key_channel": True, "error_channel": True,
                   "kl_hold": min(10, steps), "kl_end": min(40, steps), "teacher_sync": "copy", "sync_every": 10,
                   "term_clip": dc.term_clip},
        "optim": {"lr": dc.lr, "steps": steps, "seed": dc.seed},
        "run": {"out": str(out / method), "device": "cpu", "checkpoint_every": 0},
    })


def evaluate(policy: str | Path, problems: list, n: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    """Held-out metrics of a policy folder: sampled (T=1, n per problem) and greedy accuracy, mean
    response length (tokens) and entropy (nats/token, sampled-token estimate)."""
    import torch

    from train.rollout import HFGenerator, Sampling, generate_rollouts
    from train.toy import toy_prompt_records

    torch.manual_seed(seed)
    gen = HFGenerator.from_pretrained(str(policy), model_name="eval", device="cpu", batch_size=128)
    records = toy_prompt_records(problems, gen.tokenizer)
    sampled = generate_rollouts(gen, records, n=n, sampling=Sampling(temperature=1.0, max_new_tokens=max_new_tokens),
                                seed=seed)
    greedy = generate_rollouts(gen, records, n=1, sampling=Sampling(temperature=0.0, max_new_tokens=max_new_tokens),
                               seed=seed)
    lps = [x for row in sampled["response_logprobs"].to_pylist() for x in row]
    lengths = [len(x) for x in sampled["response_token_ids"].to_pylist()]
    return {
        "accuracy": sum(sampled["correct"].to_pylist()) / max(sampled.num_rows, 1),
        "greedy_accuracy": sum(greedy["correct"].to_pylist()) / max(greedy.num_rows, 1),
        "response_length": sum(lengths) / max(len(lengths), 1),
        "entropy": -sum(lps) / max(len(lps), 1),
        "n": sampled.num_rows,
    }


def _problems(dc: DemoConfig) -> tuple[list, list]:
    from train.toy import make_problems

    try:
        from train.toy import TOY_EVAL_SEED
    except ImportError:  # pragma: no cover
        TOY_EVAL_SEED = 777
    held_out = make_problems(dc.eval_problems, seed=TOY_EVAL_SEED)
    seen = {p.prompt_id for p in held_out}
    need = dc.rounds * dc.prompts_per_round
    train = [p for p in make_problems(need + len(held_out), seed=10_000 + dc.seed) if p.prompt_id not in seen][:need]
    return train, held_out


def _policy(out: Path, dc: DemoConfig, policy: str | None, log: Callable[[str], None]) -> tuple[str, float]:
    t = time.perf_counter()
    if policy:
        return policy, 0.0
    if dc.quick:  # a random tiny policy: the plumbing, not the learning
        from train.toy import build_tokenizer, tiny_model

        d = out / "policy"
        tok = build_tokenizer(d)
        tiny_model(tok, layers=2, hidden=32, seed=dc.seed).save_pretrained(d)
        return str(d), time.perf_counter() - t
    from train.toy import toy_policy

    log("toy policy: loading from cache (the first build trains it for a few CPU minutes)…")
    p = str(toy_policy())
    return p, time.perf_counter() - t


def _fmt_table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'policy':<10} {'accuracy':>9} {'greedy':>8} {'resp.len':>9} {'entropy':>8} {'steps':>6} {'train s':>8}"
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(f"{name:<10} {m['accuracy']:>9.3f} {m['greedy_accuracy']:>8.3f} {m['response_length']:>9.1f} "
                     f"{m['entropy']:>8.3f} {m.get('steps', 0):>6} {m.get('train_seconds', 0.0):>8.1f}")
    return "\n".join(lines)


def compare_plot(out: Path, methods: list[str]) -> Path | None:
    """Reward and (for TRACE) λ / KL curves of every arm on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("reward", "entropy", "response_length", "kl_forward")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    any_rows = False
    for m in methods:
        p = out / m / "metrics.jsonl"
        if not p.exists():
            continue
        rows = [json.loads(x) for x in p.read_text().splitlines() if x]
        any_rows = any_rows or bool(rows)
        for ax, k in zip(axes, keys):
            xs = [r["step"] for r in rows if k in r]
            if xs:
                ax.plot(xs, [r[k] for r in rows if k in r], label=m)
    if not any_rows:
        plt.close(fig)
        return None
    for ax, k in zip(axes, keys):
        ax.set_title(k)
        ax.set_xlabel("step")
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def run_demo(out: str | Path, dc: DemoConfig = DemoConfig(), *, policy: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into `out`; returns (and writes) the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from train.online import OnlineConfig, online_rounds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for m in dc.methods:
        if (out / m).exists() and any((out / m).iterdir()):
            raise ValueError(f"{out / m} already holds a run; choose a new --out (the demo compares fresh runs)")
    t_all = time.perf_counter()
    policy, policy_s = _policy(out, dc, policy, log)
    log(f"policy: {policy} ({policy_s:.0f} s)")
    train_problems, held_out = _problems(dc)
    log(f"evaluating the starting policy on {len(held_out)} held-out problems × {dc.eval_samples} samples…")
    base = evaluate(policy, held_out, dc.eval_samples, dc.max_new_tokens, seed=dc.seed + 1)
    log(f"baseline: accuracy {base['accuracy']:.3f}, greedy {base['greedy_accuracy']:.3f}")
    results: dict[str, dict] = {}
    oc = OnlineConfig(rounds=dc.rounds, prompts_per_round=dc.prompts_per_round, group_size=dc.group_size,
                      steps_per_round=dc.steps_per_round, max_new_tokens=dc.max_new_tokens, seed=dc.seed,
                      store=str(out / "store"))
    for method in dc.methods:
        cfg = train_config(method, policy, out, dc)
        t = time.perf_counter()
        with Progress(TextColumn(f"[bold]{method:<6}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(method, total=cfg.optim.steps, info="")

            def tick(m: dict) -> None:
                bar.update(task, completed=m["step"] + 1,
                           info=f"reward {m['reward']:.2f} λ {m['lambda']:.2f} loss {m['loss']:+.3f}")

            # both arms write to one store: each round is a version with the arm in its lineage
            online_rounds(cfg, oc, train_problems, log=lambda s: bar.console.print(f"  {s}") if "config" not in s else None,
                          on_step=tick)
        train_s = time.perf_counter() - t
        ev = evaluate(out / method / "final", held_out, dc.eval_samples, dc.max_new_tokens, seed=dc.seed + 1)
        results[method] = {**ev, "steps": cfg.optim.steps, "train_seconds": round(train_s, 1)}
        log(f"{method}: accuracy {ev['accuracy']:.3f} (baseline {base['accuracy']:.3f}) after {train_s:.0f} s")
    png = compare_plot(out, list(dc.methods))
    seconds = time.perf_counter() - t_all
    best = max((r["accuracy"] for r in results.values()), default=None)
    leaders = [m for m, r in results.items() if r["accuracy"] == best]
    winner = leaders[0] if len(leaders) == 1 else "tie"
    summary = {"baseline": base, "methods": results, "seconds": round(seconds, 1),
               "policy_seconds": round(policy_s, 1), "winner": winner, "plot": str(png) if png else None,
               "config": {**asdict(dc), "methods": list(dc.methods)}, "policy": policy,
               "stderr_accuracy": round(math.sqrt(max(base["accuracy"] * (1 - base["accuracy"]), 1e-12)
                                                  / max(base["n"], 1)), 4)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log("")
    log(_fmt_table([("baseline", base)] + [(m, r) for m, r in results.items()]))
    log(f"\nwinner on sampled accuracy: {winner} (one seed; standard error ≈ {summary['stderr_accuracy']:.3f})")
    log(f"plot: {png}\nsummary: {out / 'summary.json'}\ntotal {seconds:.0f} s (policy build/load {policy_s:.0f} s)")
    return summary


def quick_config(**changes: Any) -> DemoConfig:
    return replace(QUICK, **changes)
