"""Training configuration: a few frozen dataclasses, loadable from YAML, overridable from the CLI.

A config file mirrors the dataclasses one section each::

    model: {path: runs/toy/policy}
    data: {shards: runs/demo/shards, groups_per_step: 8, micro_batch_size: 16}
    method: {name: trace, key_channel: true, error_channel: false}
    optim: {lr: 1.0e-4, steps: 40}
    run: {out: runs/trace}

Overrides are dotted ``section.field=value`` strings (``method.name=grpo optim.lr=3e-5``); the
value is parsed as YAML so numbers, booleans and lists work. Unknown sections or fields are
refused with their name, so a typo never trains silently with a default. The resolved config is
written whole to ``<run.out>/config.yaml`` and printed at the start of every run.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.tracking import check_report_to

TEACHER_SYNCS = ("copy", "ema", "live")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelConfig:
    """The policy to train: a `save_pretrained` folder holding model and tokenizer."""

    path: str = ""
    dtype: str = "float32"  # weights dtype; on GPU the forward also runs under bf16 autocast
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataConfig:
    """Where the span-tagged shards are and how a step's batch is cut from them."""

    shards: str = ""
    groups_per_step: int = 8  # a step's batch is whole groups (GRPO advantages need the group)
    micro_batch_size: int = 16  # rollouts per forward/backward; counts stay global
    seed: int = 0  # shuffle seed; epoch e uses seed + e


@dataclass(frozen=True)
class MethodConfig:
    """The objective (DESIGN §7). Defaults are TRACE's published ones."""

    name: str = "trace"  # a row of train.methods.METHODS
    clip_low: float = 0.2
    clip_high: float = 0.28  # DAPO clip-higher
    agg: str = "token-mean"
    # TRACE: λ schedule (w0 until `kl_hold`, linear to 0 at `kl_end`), channels, term clip
    kl_w0: float = 0.5
    kl_hold: int = 10
    kl_end: int = 40
    key_channel: bool = True  # forward KL on key spans of correct rollouts (8B-style)
    error_channel: bool = False  # reverse KL on error spans of incorrect rollouts (1.7B-style)
    term_clip: float | None = None  # e.g. 0.05: pointwise clip of each vocabulary term
    # OPD (all-token self-distillation baseline): a constant coefficient on the all-token KL
    opd_coef: float = 0.5
    # Skill-SD
    skill_coef: float = 0.001
    skill_bank: str = ""  # a skill-bank JSON (`skills extract --bank`): the teacher's skill per prompt by UCB
    # the teacher: which privileged template, and how it follows the student
    teacher_template: str = "auto"  # auto (the method's own) | reference | error_type | skill | reference+error
    teacher_sync: str = "copy"  # copy every `sync_every` steps | ema | live
    sync_every: int = 10
    ema_decay: float = 0.99


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with gradient-norm clipping; one update per step's batch."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    steps: int = 40
    seed: int = 0  # torch seed (dropout, if any) and the first batch's shuffle


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how often."""

    out: str = "runs/train"
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 1
    tensorboard: bool = True
    report_to: tuple[str, ...] = ("tensorboard",)  # and/or wandb (optional package; see train/tracking.py)
    plot: bool = True
    device: str = "auto"  # auto | cpu | cuda
    distributed: str = "ddp"  # ddp | fsdp (used only under torchrun, WORLD_SIZE > 1)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# What each field means, for `spanroute train --help` (a test checks every field has a line).
HELP: dict[str, str] = {
    "model.path": "the policy: a save_pretrained folder (model + tokenizer)",
    "model.dtype": "weights dtype; on GPU the forward also runs under bf16 autocast",
    "model.gradient_checkpointing": "recompute activations in the backward (less memory, ~30% slower)",
    "data.shards": "span-tagged shards folder (`spanroute shards build`)",
    "data.groups_per_step": "prompt groups per optimizer step (a step's batch is whole groups)",
    "data.micro_batch_size": "rollouts per forward/backward; loss normalisation stays global",
    "data.seed": "shuffle seed; epoch e uses seed + e",
    "method.name": "the objective, a row of train/methods.py",
    "method.clip_low": "ε_lo of the clipped ratio",
    "method.clip_high": "ε_hi of the clipped ratio (DAPO clip-higher)",
    "method.agg": "how token losses are averaged",
    "method.kl_w0": "TRACE λ before kl_hold (span tokens' policy-gradient weight is 1 − λ/kl_w0)",
    "method.kl_hold": "optimizer steps λ stays at its base value",
    "method.kl_end": "step at which λ reaches 0 (linear from kl_hold); the teacher is not run after",
    "method.key_channel": "trace: forward KL on key spans of correct rollouts",
    "method.error_channel": "trace: reverse KL on error spans of incorrect rollouts",
    "method.term_clip": "pointwise clip of each vocabulary KL term (e.g. 0.05); null: none",
    "method.opd_coef": "opd: λ's base value of the all-token KL (same schedule as TRACE)",
    "method.skill_coef": "skill_sd: constant λ of the sampled-token k3 term",
    "method.skill_bank": "skill_sd: skill-bank JSON; the teacher's skill per prompt by UCB (empty: each row's skill)",
    "method.teacher_template": "the teacher's privileged prompt; auto: the method's own",
    "method.teacher_sync": "how the teacher follows the student: copy every sync_every steps, EMA, or live",
    "method.sync_every": "copy teacher: optimizer steps between refreshes",
    "method.ema_decay": "ema teacher: θ_T ← d·θ_T + (1 − d)·θ_S after each step",
    "optim.lr": "AdamW learning rate",
    "optim.weight_decay": "AdamW weight decay",
    "optim.betas": "AdamW betas",
    "optim.grad_clip": "gradient-norm clip",
    "optim.steps": "optimizer steps in total (a resumed run continues to this)",
    "optim.seed": "torch seed",
    "run.out": "output folder: config.yaml, metrics.jsonl, curves.png, checkpoints/, final/",
    "run.checkpoint_every": "steps between checkpoints; 0: only at the end",
    "run.keep_checkpoints": "checkpoints kept on disk",
    "run.tensorboard": "also log to <run.out>/tb",
    "run.plot": "write curves.png at the end",
    "run.device": "auto: cuda when torch sees one, else cpu",
    "run.distributed": "under torchrun: ddp or fsdp (FSDP2)",
    "run.report_to": "metric trackers: tensorboard, wandb (optional package; offline unless WANDB_API_KEY / WANDB_MODE)",
}


def fields_help() -> str:
    """Every config field with its default, meaning and choices, one per line (for --help)."""
    fixed = choices(aliases=False)
    lines = []
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            default = getattr(cls(), f.name)
            shown = list(default) if isinstance(default, tuple) else default
            extra = f" (one of: {' | '.join(fixed[key])})" if key in fixed else ""
            lines.append(f"  {key} = {yaml.safe_dump(shown, default_flow_style=True).strip().removesuffix('...').strip()}"
                         f"  {HELP[key]}{extra}")
    return "\n".join(lines)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Make dataclass `cls` from a dict, refusing unknown keys and converting tuples."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(where + '.' + u for u in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    defaults = cls()
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, getattr(defaults, name), f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert `value` to the type of the field's default (YAML reads `3e-5` as a string)."""
    if isinstance(value, list):
        value = tuple(value)
    if value is None or default is None:
        if isinstance(value, str) and value.lower() in ("null", "none", "~"):
            return None
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple) and default and all(isinstance(d, str) for d in default):
            return tuple(str(v) for v in value) if isinstance(value, tuple) else (str(value),)  # any length
        if isinstance(default, tuple):
            return tuple(_coerce(v, d, where) for v, d in zip(value, default, strict=True))
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config field {where}: cannot use {value!r} as a {type(default).__name__}") from None
    return value


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "optim": OptimConfig,
             "run": RunConfig}


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from nested dicts (missing fields keep defaults)."""
    d = d or {}
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = _build(cls, d.get(name) or {}, name)
    cfg = TrainConfig(**sections)
    validate(cfg)
    return cfg


def choices(aliases: bool = True) -> dict[str, tuple[str, ...]]:
    """Every field whose value is one of a fixed set, with that set (methods and teacher
    templates from their own tables; `aliases=False`: method names without their aliases)."""
    from train.methods import METHODS, NAMES
    from train.teacher_templates import TEACHER_TEMPLATES

    return {"model.dtype": DTYPES, "method.name": NAMES if aliases else tuple(METHODS), "method.agg": AGGREGATIONS,
            "method.teacher_sync": TEACHER_SYNCS, "method.teacher_template": ("auto", *TEACHER_TEMPLATES),
            "run.device": DEVICES, "run.distributed": ("ddp", "fsdp")}


def _not_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> ValueError:
    near = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}{hint}")


def validate(cfg: TrainConfig) -> None:
    """Refuse values the loop cannot honour, naming the field, the choices and the nearest one."""
    from train.methods import method_of

    for key, allowed in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise _not_one_of(key, value, allowed)
    m = cfg.method
    row = method_of(m.name)
    if row.channels is None and not (m.key_channel or m.error_channel):
        raise ValueError(f"method: {m.name} needs key_channel or error_channel (or both) switched on")
    if cfg.data.groups_per_step < 1 or cfg.data.micro_batch_size < 1:
        raise ValueError("data.groups_per_step and data.micro_batch_size must be >= 1")
    if cfg.optim.steps < 0:
        raise ValueError("optim.steps must be >= 0")
    check_report_to(cfg.run.report_to)
    if cfg.run.distributed not in ("ddp", "fsdp"):
        raise ValueError(f"run.distributed must be ddp or fsdp, got {cfg.run.distributed!r}")
    if m.kl_end < m.kl_hold:
        raise ValueError(f"method.kl_end ({m.kl_end}) must be >= method.kl_hold ({m.kl_hold})")
    if m.skill_bank and (row.template is None or (m.teacher_template if m.teacher_template != "auto"
                                                   else row.template) != "skill"):
        raise ValueError(f"method.skill_bank needs a teacher on the skill template (method.name=skill_sd); "
                         f"{m.name} with teacher_template={m.teacher_template} has none")
    if m.sync_every < 1 or not 0.0 <= m.ema_decay <= 1.0:
        raise ValueError("method.sync_every must be >= 1 and method.ema_decay in [0, 1]")


def check_device(cfg: TrainConfig) -> None:
    """Refuse ``run.device=cuda`` where this torch sees no CUDA device (before anything is written)."""
    if cfg.run.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"run.device=cuda but torch {torch.__version__} ({build}) sees no CUDA device; "
                         "use run.device=cpu or run.device=auto")


def apply_overrides(d: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of nested dict `d` with ``a.b=value`` overrides applied (values parsed as YAML)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (d or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ValueError(f"override {item!r}: the key must be section.field (e.g. optim.lr)")
        section, name = parts
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ValueError(f"override {item!r}: section {section!r} is not a mapping")
        out[section][name] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config file (or start from defaults when `path` is None), apply overrides."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"config file {p} must hold a mapping of sections")
    return from_dict(apply_overrides(d, list(overrides)))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def replace(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """A copy of `cfg` with some fields changed: ``replace(cfg, optim={"steps": 5})``."""
    d = to_dict(cfg)
    for name, values in sections.items():
        d[name] = {**d[name], **values}
    return from_dict(d)


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
