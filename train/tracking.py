"""Where per-step metrics go besides ``metrics.jsonl``: ``run.report_to: [tensorboard, wandb]``.

- ``tensorboard``: ``<run.out>/tb/`` (``run.tensorboard: false`` also turns it off).
- ``wandb``: Weights & Biases, an optional dependency (``pip install wandb`` or
  ``spanroute[wandb]``). Offline-friendly: the run is logged **offline** into ``<run.out>/wandb/``
  unless ``WANDB_MODE`` says otherwise or ``WANDB_API_KEY`` is set (then online); sync an offline
  run later with ``wandb sync <run.out>/wandb/offline-run-*``. Project: ``$WANDB_PROJECT`` or
  ``spanroute``; the run id is derived from ``run.out``, so a resumed run continues the same W&B run.
  The whole resolved config is logged as the run's config; keys are never logged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

REPORTERS = ("tensorboard", "wandb")


def check_report_to(report_to: tuple[str, ...]) -> None:
    """Refuse unknown reporters, and `wandb` when the package is not installed (one line)."""
    unknown = [r for r in report_to if r not in REPORTERS and r != "none"]
    if unknown:
        raise ValueError(f"run.report_to: unknown {', '.join(unknown)}; choose from {', '.join(REPORTERS)} (or none)")
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        raise ValueError("run.report_to has wandb but the wandb package is not installed: pip install wandb "
                         "(or spanroute[wandb]), or drop wandb from run.report_to")


class WandbTracker:
    """One W&B run per ``run.out``; ``log`` takes the trainer's per-step metrics dict."""

    def __init__(self, config: dict[str, Any], out: Path):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = "spanroute-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "spanroute"), name=out.name, id=run_id,
                              resume="allow", dir=str(out), config=config, mode=mode)

    def log(self, m: dict[str, Any]) -> None:
        self.run.log({f"train/{k}": v for k, v in m.items() if k != "step" and isinstance(v, (int, float))},
                     step=int(m["step"]))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trainer's metrics log plus any extra trackers: the same ``write`` / ``close``."""

    def __init__(self, base: Any, extra: list[Any]):
        self.base, self.extra = base, extra

    def write(self, m: dict[str, Any]) -> None:
        self.base.write(m)
        for t in self.extra:
            t.log(m)

    def close(self) -> None:
        self.base.close()
        for t in self.extra:
            t.close()


def with_trackers(metrics_log: Any, report_to: tuple[str, ...], config: dict[str, Any], out: Path,
                  enabled: bool) -> Any:
    """`metrics_log` plus a W&B run when ``wandb`` is in `report_to` (rank 0 only: `enabled`)."""
    if not enabled or "wandb" not in report_to:
        return metrics_log
    check_report_to(report_to)
    return Trackers(metrics_log, [WandbTracker(config, out)])
