"""The training methods as rows of one table: a new method is a new row, never a new branch.

A row says, as data (DESIGN §7):

- ``template``: the teacher's privileged prompt when ``method.teacher_template`` is ``auto``
  (``None``: the method has no teacher);
- ``channels``: where the full-distribution KL is on, as names from ``CHANNELS`` —
  ``key`` (forward KL on key spans of correct rollouts), ``error`` (reverse KL on error spans of
  incorrect rollouts), ``all`` (forward KL on every response token); ``None`` takes them from
  ``method.key_channel`` / ``method.error_channel`` (so ``method.name: trace`` keeps its meaning);
- ``coef`` and ``decay``: the config field holding λ's base value, and whether λ follows TRACE's
  schedule (w0 until ``kl_hold``, linear to 0 at ``kl_end``) or stays constant;
- ``loss``: which loss adapter (``LOSS_ADAPTERS``) turns the step's tensors into the call of a pure
  loss from ``train.losses``;
- ``route``: a transform of each row's token routes before the step (``ROUTE_TRANSFORMS``);
  ``random`` keeps each response's count of key and error tokens and places them uniformly at
  random (the paper's random-span control), seeded by (data seed, rollout id), so a row gets the
  same placement in every epoch, on every rank and at every micro-batch size.

The loop reads a row; it never compares the method's name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# KL channels: (route id in the shards, which rollouts, KL direction). `all` ignores routes.
CHANNELS: dict[str, tuple[int | None, bool | None, str]] = {
    "key": (1, True, "forward"),
    "error": (2, False, "reverse"),
    "all": (None, None, "forward"),
}


@dataclass(frozen=True)
class Method:
    name: str
    loss: str  # key of LOSS_ADAPTERS
    template: str | None = None  # default teacher template; None: no teacher
    channels: tuple[str, ...] | None = ()  # KL channels; None: from the config's key/error flags
    coef: str | None = None  # MethodConfig field with λ's base value; None: λ = 0
    decay: bool = False  # λ follows kl_schedule(w0=coef, hold, end) instead of staying constant
    teacher_logprobs: bool = False  # the loss uses the teacher's sampled-token log-probs
    route: str = "identity"  # key of ROUTE_TRANSFORMS
    summary: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("grpo", loss="pg", summary="GRPO: clipped surrogate, no teacher"),
    Method("trace", loss="span_kl", template="reference", channels=None, coef="kl_w0", decay=True,
           summary="TRACE: KL channels from method.key_channel / method.error_channel"),
    Method("trace-fkl", loss="span_kl", template="reference", channels=("key",), coef="kl_w0", decay=True,
           summary="TRACE, forward KL on key spans of correct rollouts only"),
    Method("trace-rkl", loss="span_kl", template="reference", channels=("error",), coef="kl_w0", decay=True,
           summary="TRACE, reverse KL on error spans of incorrect rollouts only"),
    Method("trace-random", loss="span_kl", template="reference", channels=("key", "error"), coef="kl_w0",
           decay=True, route="random",
           summary="TRACE with each response's span tokens moved to random positions (control)"),
    Method("opd", loss="span_kl", template="reference", channels=("all",), coef="opd_coef", decay=True,
           summary="all-token on-policy self-distillation (forward KL on every response token)"),
    Method("skill_sd", loss="sampled_k3", template="skill", coef="skill_coef", teacher_logprobs=True,
           summary="Skill-SD: GRPO + λ·k3 on the sampled token against the skill-prompted teacher"),
)}
ALIASES = {"skill-sd": "skill_sd", "trace_fkl": "trace-fkl", "trace_rkl": "trace-rkl",
           "trace_random": "trace-random"}
NAMES = tuple(METHODS) + tuple(ALIASES)


def method_of(name: str) -> Method:
    """The row of `name` (aliases allowed). Raises ValueError naming the choices."""
    m = METHODS.get(ALIASES.get(name, name))
    if m is None:
        raise ValueError(f"method.name must be one of {', '.join(NAMES)}, got {name!r}")
    return m


def channels_of(method: Method, cfg_method: Any) -> tuple[str, ...]:
    """The KL channels a run uses: the row's, or the config's key/error flags for ``channels=None``."""
    if method.channels is not None:
        return method.channels
    return tuple(c for c, on in (("key", cfg_method.key_channel), ("error", cfg_method.error_channel)) if on)


def lambda_at(method: Method, cfg_method: Any, step: int) -> float:
    """λ at optimizer step `step` (0-based)."""
    from train.losses import kl_schedule

    if method.coef is None:
        return 0.0
    base = float(getattr(cfg_method, method.coef))
    if method.decay:
        return kl_schedule(step, w0=base, hold=cfg_method.kl_hold, end=cfg_method.kl_end)
    return base


def lambda_max(method: Method, cfg_method: Any) -> float:
    """λ's base value (TRACE's w0): span tokens' policy-gradient weight is 1 − λ/λ_max."""
    return float(getattr(cfg_method, method.coef)) if method.coef else 0.0


# ----------------------------------------------------------------------------- route transforms


def _identity(rows: Any, seed: int) -> Any:
    return rows


def _random_routes(rows: Any, seed: int) -> Any:
    """Each row's key and error token counts kept, positions drawn uniformly without replacement.
    `rows`: dicts, or an Arrow table of shard rows (the loop's batch), whose route column is replaced."""
    if hasattr(rows, "column_names"):
        import pyarrow as pa

        moved = _random_routes(rows.select(["rollout_id", "route"]).to_pylist(), seed)
        i = rows.schema.get_field_index("route")
        return rows.set_column(i, rows.schema.field(i), pa.array([r["route"] for r in moved], rows.schema.field(i).type))
    out = []
    for r in rows:
        route = np.asarray(r["route"], dtype=np.int8)
        digest = hashlib.sha256(f"{seed}:{r['rollout_id']}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        labels = route[route > 0]
        new = np.zeros_like(route)
        if labels.size:
            new[rng.choice(route.size, size=labels.size, replace=False)] = rng.permutation(labels)
        out.append({**r, "route": new.tolist()})
    return out


ROUTE_TRANSFORMS: dict[str, Callable[[Any, int], Any]] = {  # rows (dicts or an Arrow table), seed -> rows
    "identity": _identity,
    "random": _random_routes,
}


# ------------------------------------------------------------------------------- loss adapters


@dataclass
class StepTensors:
    """What the loop hands a loss adapter for one micro-batch (shapes [B, T], nats)."""

    logprobs_BT: Any
    old_logprobs_BT: Any
    advantages_B: Any
    response_mask_BT: Any
    kl_mask_BT: Any  # bool: where KL_t is on (all False when no channel is)
    kl_BT: Any  # KL_t at kl_mask_BT positions, 0 elsewhere
    teacher_logprobs_BT: Any | None  # the teacher's sampled-token log-probs, when the row asks
    lam: float
    lam_max: float
    pg: dict[str, Any]  # clip_low, clip_high, agg, num_tokens, num_seqs


def _pg_loss(x: StepTensors):
    from train.losses import grpo_loss

    return grpo_loss(logprobs_BT=x.logprobs_BT, old_logprobs_BT=x.old_logprobs_BT, advantages_B=x.advantages_B,
                     response_mask_BT=x.response_mask_BT, **x.pg)


def _span_kl_loss(x: StepTensors):
    from train.losses import trace_loss

    return trace_loss(logprobs_BT=x.logprobs_BT, old_logprobs_BT=x.old_logprobs_BT, advantages_B=x.advantages_B,
                      response_mask_BT=x.response_mask_BT, span_mask_BT=x.kl_mask_BT, span_kl_BT=x.kl_BT,
                      kl_coef=x.lam, kl_coef_max=x.lam_max, **x.pg)


def _sampled_k3_loss(x: StepTensors):
    from train.losses import skill_sd_loss

    # no teacher this step (λ = 0): the student's own log-probs make every k3 term exactly 0
    teacher = x.teacher_logprobs_BT if x.teacher_logprobs_BT is not None else x.logprobs_BT.detach()
    return skill_sd_loss(logprobs_BT=x.logprobs_BT, old_logprobs_BT=x.old_logprobs_BT, teacher_logprobs_BT=teacher,
                         advantages_B=x.advantages_B, response_mask_BT=x.response_mask_BT, coef=x.lam, **x.pg)


LOSS_ADAPTERS: dict[str, Callable[[StepTensors], Any]] = {
    "pg": _pg_loss,
    "span_kl": _span_kl_loss,
    "sampled_k3": _sampled_k3_loss,
}
