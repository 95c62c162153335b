"""The demo's numbers and pictures: per-arm means with Student t 95% intervals over seeds, paired
differences to GRPO, the printed table, ``results.md``, ``curves.png`` and ``summary.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from train.stats import mean, mean_ci, paired_diff_ci

INTERVAL = "95% Student t interval over seeds (t quantile with n-1 df); differences paired by seed"
METRICS = ("accuracy", "greedy_accuracy", "response_length", "entropy")


def _r(x: float, nd: int = 4) -> float | None:
    return None if math.isnan(x) else round(x, nd)


def arm_summary(rows: list[dict]) -> dict[str, Any]:
    """Means of `METRICS` over the per-seed rows, ``ci95`` of the accuracy, and the rows themselves."""
    m, lo, hi = mean_ci([r["accuracy"] for r in rows])
    out: dict[str, Any] = {k: _r(mean([r[k] for r in rows])) for k in METRICS}
    out.update({"accuracy": _r(m), "ci95": [_r(lo), _r(hi)], "seeds": rows})
    return out


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, Any]:
    """{"baseline", "methods", "comparisons", "winner", "interval"} from ``{"baseline": rows, arm:
    rows}``, rows in the same seed order for every arm. Comparisons are ``<arm>-grpo`` (paired by
    seed) for every arm but GRPO; the winner is the arm with the highest mean sampled accuracy."""
    methods = {a: arm_summary(rows) for a, rows in per_seed.items() if a != "baseline" and rows}
    comparisons = {}
    if "grpo" in methods:
        g = [r["accuracy"] for r in per_seed["grpo"]]
        for a in methods:
            if a != "grpo":
                d, lo, hi = paired_diff_ci([r["accuracy"] for r in per_seed[a]], g)
                comparisons[f"{a}-grpo"] = {"diff": _r(d), "ci95": [_r(lo), _r(hi)]}
    best = max(methods, key=lambda a: methods[a]["accuracy"], default=None)
    return {"baseline": arm_summary(per_seed["baseline"]), "methods": methods, "comparisons": comparisons,
            "winner": best, "interval": INTERVAL}


def _ci(x: dict) -> str:
    lo, hi = x["ci95"]
    return f"{x['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{x['accuracy']:.3f}"


def table_rows(summary: dict) -> list[list[str]]:
    """Header + one row per policy: accuracy [95% CI], difference to GRPO [95% CI], greedy accuracy,
    response length (tokens), entropy (nats/token)."""
    rows = [["policy", "sampled accuracy [95% CI]", "− GRPO [95% CI]", "greedy", "resp. length (tokens)",
             "entropy (nats/token)"]]
    for name, x in [("baseline", summary["baseline"]), *summary["methods"].items()]:
        c = summary["comparisons"].get(f"{name}-grpo")
        diff = (f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
                if c and c["ci95"][0] is not None else ("—" if not c else f"{c['diff']:+.3f} [n/a]"))
        rows.append([name, _ci(x), diff, f"{x['greedy_accuracy']:.3f}", f"{x['response_length']:.1f}",
                     f"{x['entropy']:.3f}"])
    return rows


def markdown(summary: dict) -> str:
    """``results.md``: the table, the interval method, the budget and wall time."""
    rows = table_rows(summary)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    cfg = summary.get("config", {})
    notes = [f"\n{len(cfg.get('seeds') or [])} seeds {cfg.get('seeds')}; {summary['interval']}; the baseline is "
             "one evaluation of the starting policy (same problems and sampling seed as every arm).",
             f"Budget per arm and seed: {cfg.get('rounds')} rounds × {cfg.get('prompts_per_round')} prompts × "
             f"G = {cfg.get('group_size')}, {cfg.get('steps_per_round')} steps per round, lr {cfg.get('lr')}; "
             f"held-out: {cfg.get('eval_problems')} problems × {cfg.get('eval_samples')} samples (T = 1) + greedy.",
             f"Winner on mean sampled accuracy: {summary['winner']}. Wall time {summary.get('seconds', 0):.0f} s."]
    notes += [f"Not run: {msg}" for msg in summary.get("failed", {}).values()]
    return "\n".join(lines + notes) + "\n"


def _curves(run_dirs: list[str], key: str) -> tuple[list[int], list[list[float]]]:
    runs = []
    for d in run_dirs:
        p = Path(d) / "metrics.jsonl"
        rows = [json.loads(x) for x in p.read_text().splitlines() if x] if p.exists() else []
        runs.append({r["step"]: r[key] for r in rows if key in r})
    steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    return steps, [[r[s] for s in steps] for r in runs]


def plot(out: Path, summary: dict) -> Path | None:
    """curves.png: training reward, entropy and response length per step (line: mean over seeds,
    band: min–max over seeds), and held-out sampled accuracy per arm with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("reward", "train reward (fraction correct)"), ("entropy", "entropy (nats/token)"),
              ("response_length", "response length (tokens)"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for arm, x in summary["methods"].items():
            steps, runs = _curves([r["dir"] for r in x["seeds"] if "dir" in r], key)
            if not steps:
                continue
            cols = list(zip(*runs))
            line, = ax.plot(steps, [mean(c) for c in cols], label=arm)
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
    ax = axes[-1]
    names = ["baseline", *summary["methods"]]
    xs = [summary["baseline"], *summary["methods"].values()]
    colors = ["black", *(f"C{k}" for k in range(len(xs) - 1))]  # each arm in its curves' colour
    for i, (x, color) in enumerate(zip(xs, colors)):
        lo, hi = x["ci95"]
        err = [[x["accuracy"] - lo], [hi - x["accuracy"]]] if lo is not None else None
        ax.errorbar([i], [x["accuracy"]], yerr=err, fmt="o", capsize=4, color=color)
    ax.axhline(summary["baseline"]["accuracy"], color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("held-out sampled accuracy (fraction)")
    ax.set_title("mean over seeds, 95% t interval", fontsize=8)
    if axes[0].get_lines():
        axes[0].legend(fontsize=7, title="band: min–max over seeds", title_fontsize=7)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def write_outputs(out: Path, summary: dict, log: Callable[[str], None]) -> None:
    """Plot, ``results.md`` and ``summary.json`` into `out`, and print the table."""
    png = plot(out, summary)
    summary["plot"] = str(png) if png else None
    (out / "results.md").write_text(markdown(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    log("")
    for r in rows:
        log("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    log(f"\n{summary['interval']}; winner on mean sampled accuracy: {summary['winner']}")
    for msg in summary.get("failed", {}).values():
        log(f"not run: {msg}")
    log(f"plot: {png}\nresults: {out / 'results.md'}\nsummary: {out / 'summary.json'}\n"
        f"total {summary['seconds']:.0f} s (policy build/load {summary['policy_seconds']:.0f} s)")
