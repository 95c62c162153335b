"""The one training loop: TRACE, Skill-SD, GRPO and all-token OPD from span-tagged shards.

Read top to bottom: ``train(cfg)`` sets up (devices, model, teacher, optimizer, data, resume),
then each step takes a batch of whole groups, computes group advantages over the global batch,
splits the rank's share into micro-batches, and for each one scores the student (and, when the
method needs it, the teacher), calls the method's pure loss from ``train.losses`` and accumulates
gradients; then clips, steps AdamW, refreshes the teacher, logs and checkpoints.

Objective per method (DESIGN §7; the loss functions live in ``train/losses.py``):

- ``grpo``: clipped surrogate, DAPO clip-higher (ε_lo 0.2, ε_hi 0.28), one update per batch.
- ``trace``: GRPO with span tokens' policy-gradient weight handed to a KL channel on active spans
  (forward KL on key spans of correct rollouts, reverse KL on error spans of incorrect ones),
  λ_s = w0 until ``kl_hold``, linear to 0 at ``kl_end``. When λ_s = 0 the teacher is not run at
  all, so a λ = 0 TRACE run *is* a GRPO run, step for step.
- ``skill_sd``: GRPO + λ·k3 on the sampled token against the skill-conditioned teacher.
- ``opd``: the all-token self-distillation baseline: TRACE's KL channel on every response token.
- ``trace-fkl`` / ``trace-rkl`` / ``trace-random``: TRACE's ablations (key spans only, error spans
  only, each response's span tokens moved to random positions).

Each method is a row of ``train.methods.METHODS`` (teacher template, KL channels, λ schedule, loss,
route transform); the loop reads the row and never compares the method's name.

Departures worth knowing:
- Gradient accumulation uses global counts: every rank reads the whole global batch (reading is
  cheap), so token and sequence counts are exact without a collective, and each micro-batch's loss
  is already normalised by them; the loss is scaled by the world size because DDP/FSDP average
  gradients over ranks. Summed micro-batch gradients therefore equal the full-batch gradient.
- The behaviour log-probs come from the shards (the generator's), not from a fresh forward of the
  pre-update weights, so off-policy drift within an online round is corrected by the ratio.
- Memory: the student's sampled-token log-probs are computed in row chunks under activation
  checkpointing, so ``[B, T, V]`` logits never exist; full distributions are formed only at the
  positions a KL channel needs (span tokens for TRACE, all response tokens for OPD).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from train import losses as L
from train.config import TrainConfig, check_device, dump, to_dict
from train.model_names import resolve_model
from train.scoring import Scored, ScoringBatch, pack_flat, pad_rows, rows_to_BT, score, span_kl
from train.shards import BatchStream, ShardReader, check_tokenizer
from train.methods import CHANNELS, LOSS_ADAPTERS, ROUTE_TRANSFORMS, Method, StepTensors, channels_of, lambda_at, \
    lambda_max, method_of
from train.teacher import Teacher
from train.tracking import with_trackers

LOGPROB_CHUNK_ROWS = 512  # rows of [N, V] logits alive at once (log-probs and span KLs)
ADDITIVE_METRICS = ("loss", "pg_loss", "grpo_loss", "kl_term", "kl_sampled_k3")


# ----------------------------------------------------------------------------------- scoring


class PolicyScorer(nn.Module):
    """The student as one module whose ``forward`` scores a batch (``train.scoring.score``): DDP
    and FSDP see a single forward per micro-batch. Returns sampled-token log-probs ``[B, T]``
    (nats, with gradient), entropies ``[B, T]`` (nats, detached) and the final hidden states at
    the ``select_BT`` positions ``[N, H]`` — full distributions are formed from those only, chunk
    by chunk, inside ``train.scoring.span_kl``."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids_BL: Tensor, attention_mask_BL: Tensor, response_ids_BT: Tensor,
                response_mask_BT: Tensor, pred_pos_BT: Tensor, select_BT: Tensor | None = None,
                token_logprobs: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        batch = ScoringBatch(input_ids_BL, attention_mask_BL, response_ids_BT, response_mask_BT, pred_pos_BT)
        s = score(self.lm, batch, select_BT=select_BT, entropy=token_logprobs, chunk_rows=LOGPROB_CHUNK_ROWS,
                  token_logprobs=token_logprobs)
        return s.logprobs_BT, s.entropy_BT, s.hidden_NH


# ------------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch on the device: the student's scoring batch (``train.scoring.ScoringBatch``:
    prompt + response, right-padded), the teacher's (the same responses after the teacher prompt;
    None when the step runs no teacher) and the per-token training columns padded to the same T."""

    batch: ScoringBatch
    old_logprobs_BT: Tensor  # float32, behaviour log-probs (nats); 0 at padding
    route_BT: Tensor  # int8: 0 none, 1 key, 2 error
    correct_B: Tensor  # bool
    teacher: ScoringBatch | None = None

    @property
    def response_mask_BT(self) -> Tensor:
        return self.batch.response_mask_BT


def _lists(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values, row splits [B+1])."""
    col = table.column(name).combine_chunks()
    splits = np.zeros(len(col) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(col).to_numpy(), out=splits[1:])
    return pc.list_flatten(col).to_numpy(), splits


def collate(rows: pa.Table, pad_id: int, device: torch.device, teacher_key: str | None = None) -> MicroBatch:
    """A micro-batch from shard rows (Arrow): one padded tensor per column, filled from the flat
    list values (``train.scoring.pack_flat`` / ``pad_rows``), never a tensor per row. With
    `teacher_key` (a ``teacher_prompt_ids_<template>`` column) also the teacher's batch."""
    resp = _lists(rows, "response_ids")
    batch = pack_flat(*_lists(rows, "prompt_ids"), *resp, pad_id=pad_id)
    T = batch.response_ids_BT.shape[1]
    teacher = pack_flat(*_lists(rows, teacher_key), *resp, pad_id=pad_id) if teacher_key else None
    to = lambda b: ScoringBatch(*(x.to(device) for x in (b.input_ids_BL, b.attention_mask_BL, b.response_ids_BT,  # noqa: E731
                                                          b.response_mask_BT, b.pred_pos_BT)))
    correct = rows.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    return MicroBatch(batch=to(batch), teacher=to(teacher) if teacher is not None else None,
                      old_logprobs_BT=pad_rows(*_lists(rows, "old_logprobs"), T, torch.float32).to(device),
                      route_BT=pad_rows(*_lists(rows, "route"), T, torch.int8).to(device),
                      correct_B=torch.from_numpy(correct).to(device))


# ------------------------------------------------------------------------------------ methods
# A method is a row of `train.methods.METHODS`: its KL channels say where full distributions are
# needed, its loss adapter which pure loss runs; the loop itself never compares the method's name.


def kl_masks(t: MicroBatch, channels: tuple[str, ...]) -> dict[str, Tensor]:
    """Per KL direction, the [B, T] positions whose channel is on (`train.methods.CHANNELS`)."""
    mask_BT = t.response_mask_BT
    out: dict[str, Tensor] = {}
    for name in channels:
        route, want_correct, direction = CHANNELS[name]
        on_BT = mask_BT if route is None else (t.route_BT == route) & (t.correct_B[:, None] == want_correct)
        out[direction] = out.get(direction, torch.zeros_like(mask_BT)) | (on_BT & mask_BT)
    return out


def _span_kl(masks: dict[str, Tensor], student: Scored, teacher: Scored, term_clip: float | None
             ) -> tuple[Tensor, dict[str, float]]:
    """KL_t at the selected positions, scattered to [B, T], one direction at a time (a position
    in both directions' masks counts as reverse)."""
    sel_BT = student.select_BT
    rev_BT = masks.get("reverse", torch.zeros_like(sel_BT)) & sel_BT
    kl_BT = torch.zeros(sel_BT.shape, dtype=torch.float32, device=sel_BT.device)
    stats: dict[str, float] = {}
    for name, part_BT in (("forward", sel_BT & ~rev_BT), ("reverse", rev_BT)):
        if not bool(part_BT.any()):
            continue
        rows_N = part_BT[sel_BT]  # which of the selected rows belong to this channel
        kl_N = span_kl(_rows(student, rows_N, part_BT), _rows(teacher, rows_N, part_BT), direction=name,
                       term_clip=term_clip, chunk_rows=LOGPROB_CHUNK_ROWS)
        kl_BT = kl_BT + rows_to_BT(kl_N.float(), part_BT)
        stats[f"kl_{name}_sum"] = float(kl_N.detach().sum())
        stats[f"kl_{name}_n"] = float(kl_N.numel())
    return kl_BT, stats


def _rows(s: Scored, rows_N: Tensor, select_BT: Tensor) -> Scored:
    return Scored(logprobs_BT=s.logprobs_BT, response_mask_BT=s.response_mask_BT, select_BT=select_BT,
                  hidden_NH=s.hidden_NH[rows_N], head=s.head)


def _teacher_score(teacher: Teacher, wrapped: nn.Module, model: nn.Module, batch: ScoringBatch,
                   select_BT: Tensor | None, token_logprobs: bool) -> Scored:
    """Score the teacher batch: sampled-token log-probs only when the loss uses them (Skill-SD),
    hidden states at the KL positions. A live teacher goes through the wrapped student's own
    forward (under no_grad), so DDP/FSDP hooks gather sharded weights exactly as for the student."""
    if teacher.mode != "live":
        return teacher.score(batch, select_BT, token_logprobs=token_logprobs)
    with torch.no_grad():
        lp_BT, _, hidden_NH = wrapped(batch.input_ids_BL, batch.attention_mask_BL, batch.response_ids_BT,
                                      batch.response_mask_BT, batch.pred_pos_BT, select_BT, token_logprobs)
    sel = select_BT if select_BT is not None else torch.zeros_like(batch.response_mask_BT)
    return Scored(logprobs_BT=lp_BT, response_mask_BT=batch.response_mask_BT, select_BT=sel & batch.response_mask_BT,
                  hidden_NH=hidden_NH, head=model.get_output_embeddings())


def teacher_template(cfg: TrainConfig) -> str | None:
    """The teacher's template: the config's, or the method row's for ``auto`` (None: no teacher)."""
    row = method_of(cfg.method.name)
    if row.template is None:
        return None
    t = cfg.method.teacher_template
    return row.template if t == "auto" else t


@dataclass(frozen=True)
class StepContext:
    """What every micro-batch of a run shares: the method row and the modules it scores with."""

    cfg: TrainConfig
    row: Method
    channels: tuple[str, ...]
    teacher: Teacher
    wrapped: nn.Module
    model: nn.Module
    pad_id: int
    prompt_key: str
    device: torch.device
    world: int


def micro_step(ctx: StepContext, mb_rows: pa.Table, advantages_B: Tensor, lam: float, *, num_tokens: int,
               num_seqs: int) -> tuple[Tensor, dict[str, float], dict[str, float], MicroBatch, Tensor]:
    """One micro-batch's loss: score the student (full distributions at the KL positions), the
    teacher when λ > 0 and the row needs one, then the row's loss adapter.
    Returns (loss, loss metrics, KL stats, the micro-batch, entropies [B, T])."""
    m, row = ctx.cfg.method, ctx.row
    taught_here = lam > 0 and (bool(ctx.channels) or row.teacher_logprobs)  # kl_masks has one entry per channel
    t = collate(mb_rows, ctx.pad_id, ctx.device, teacher_key=ctx.prompt_key if taught_here else None)
    masks = kl_masks(t, ctx.channels) if lam > 0 else {}
    select_BT = None
    for mask_BT in masks.values():
        select_BT = mask_BT if select_BT is None else select_BT | mask_BT
    b = t.batch
    lp_BT, ent_BT, hidden_NH = ctx.wrapped(b.input_ids_BL, b.attention_mask_BL, b.response_ids_BT,
                                           b.response_mask_BT, b.pred_pos_BT, select_BT)
    kl_BT, kl_stats, teacher_lp_BT = torch.zeros_like(lp_BT), {}, None
    if taught_here:
        taught = _teacher_score(ctx.teacher, ctx.wrapped, ctx.model, t.teacher, select_BT,
                                token_logprobs=row.teacher_logprobs)
        teacher_lp_BT = taught.logprobs_BT if row.teacher_logprobs else None
        if select_BT is not None:
            student = Scored(logprobs_BT=lp_BT, response_mask_BT=t.response_mask_BT, select_BT=select_BT,
                             hidden_NH=hidden_NH, head=ctx.model.get_output_embeddings())
            kl_BT, kl_stats = _span_kl(masks, student, taught, m.term_clip)
    x = StepTensors(logprobs_BT=lp_BT, old_logprobs_BT=t.old_logprobs_BT, advantages_B=advantages_B.to(ctx.device),
                    response_mask_BT=t.response_mask_BT,
                    kl_mask_BT=select_BT if select_BT is not None else torch.zeros_like(t.response_mask_BT),
                    kl_BT=kl_BT, teacher_logprobs_BT=teacher_lp_BT, lam=lam, lam_max=lambda_max(row, m),
                    pg=dict(clip_low=m.clip_low, clip_high=m.clip_high, agg=m.agg, num_tokens=num_tokens,
                            num_seqs=num_seqs))
    loss, lm = LOSS_ADAPTERS[row.loss](x)
    return loss, lm, kl_stats, t, ent_BT


def step_gradients(ctx: StepContext, rows: Any, lam: float, rank: int, autocast: Any) -> dict[str, float]:
    """Accumulate one optimizer step's gradients into the student: group advantages over the
    step's global batch (`rows`, an Arrow table of whole groups), then this rank's share in
    micro-batches (the last one syncs DDP). Returns the step's summed metrics on this rank."""
    world = ctx.world
    advantages_B = L.group_advantages(torch.tensor(rows.column("reward").to_numpy()), rows.column("group_id").to_pylist())
    num_tokens, num_seqs = _num_tokens(rows), rows.num_rows  # global counts of this optimizer step
    local_idx = list(range(rank * num_seqs // world, (rank + 1) * num_seqs // world))
    size = ctx.cfg.data.micro_batch_size
    micro = [local_idx[s: s + size] for s in range(0, len(local_idx), size)]
    sums: dict[str, float] = {}
    for k, idx in enumerate(micro):
        last = k == len(micro) - 1
        sync_ctx = ctx.wrapped.no_sync() if (world > 1 and hasattr(ctx.wrapped, "no_sync") and not last) else nullcontext()
        with sync_ctx:
            with autocast:
                loss, lm, kl_stats, t, ent_BT = micro_step(ctx, rows.take(idx), advantages_B[idx], lam,
                                                           num_tokens=num_tokens, num_seqs=num_seqs)
            (loss * world).backward()
        _accumulate(sums, lm, kl_stats, t, ent_BT, n_tokens_mb=int(t.response_mask_BT.sum()),
                    num_tokens=num_tokens, num_seqs=num_seqs)
    return sums


# ------------------------------------------------------------------------------------- setup


def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def setup_skill_bank(cfg: TrainConfig, tokenizer: Any, prompt_key: str, out: Path, start: int,
                     rank: int) -> Any:
    """The UCB skill router when ``method.skill_bank`` is set (``train.skill_bank``), else None."""
    if not cfg.method.skill_bank:
        return None
    from train.skill_bank import SkillRouter

    return SkillRouter(cfg.method.skill_bank, tokenizer, prompt_key,
                       out / "teacher_skills.jsonl" if rank == 0 else None, start)


def setup_model(cfg: TrainConfig, device: torch.device, check: Callable[[Any], None] = lambda tok: None
                ) -> tuple[nn.Module, Any]:
    """(model in train mode on `device`, tokenizer) from ``model.path``. `check(tokenizer)` runs
    before any weight is read, so a refused tokenizer costs no model load (and prints nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cfg.model.path:
        raise ValueError("model.path is empty: point it at a save_pretrained folder (model + tokenizer)")
    path = resolve_model(cfg.model.path, "model.path")  # a folder, or toy / smollm2
    tokenizer = AutoTokenizer.from_pretrained(path)
    check(tokenizer)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model, tokenizer


def wrap_distributed(scorer: PolicyScorer, cfg: TrainConfig, world: int, device: torch.device) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each decoder layer, then the root)."""
    if world == 1:
        return scorer
    if cfg.run.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in scorer.lm.get_decoder().layers:
            fully_shard(layer)
        fully_shard(scorer)
        return scorer
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(scorer, device_ids=[device.index] if device.type == "cuda" else None)


def _full_state(module: nn.Module, world: int) -> dict[str, Tensor]:
    """The model's full (unsharded) state dict, keys as in the unwrapped LM."""
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    else:
        sd = module.state_dict()
    return {k.removeprefix("module.").removeprefix("lm."): v for k, v in sd.items()}


# ------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: Path, *, step: int, wrapped: nn.Module, optimizer: torch.optim.Optimizer,
                    teacher: Teacher, stream: BatchStream, cfg: TrainConfig, world: int, rank: int) -> None:
    """Everything a bitwise resume needs: weights, AdamW moments, teacher, RNG, data position."""
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opt = get_optimizer_state_dict(wrapped, optimizer, options=StateDictOptions(full_state_dict=True))
    else:
        opt = optimizer.state_dict()
    model = _full_state(wrapped, world)
    if rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model, "optimizer": opt, "teacher": _teacher_state(teacher),
                "rng": _rng_state(), "data": stream.state(), "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact
    (path.parent / "latest").write_text(path.name)


def _teacher_state(teacher: Teacher) -> dict[str, Any] | None:
    if teacher.mode == "live":
        return None
    return {"model": teacher.model.state_dict(), "last_refresh": teacher.last_refresh}


def latest_checkpoint(out: Path) -> Path | None:
    marker = out / "checkpoints" / "latest"
    if not marker.exists():
        return None
    p = out / "checkpoints" / marker.read_text().strip()
    return p if p.exists() else None


def load_checkpoint(path: Path, *, wrapped: nn.Module, optimizer: torch.optim.Optimizer, teacher: Teacher,
                    stream: BatchStream, world: int, same_data: bool) -> int:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if world > 1:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        inner = wrapped.module if hasattr(wrapped, "module") else wrapped
        set_model_state_dict(inner.lm, ck["model"], options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(wrapped, optimizer, ck["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        wrapped.lm.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
    if ck["teacher"] is not None:
        teacher.model.load_state_dict(ck["teacher"]["model"])
        teacher.last_refresh = ck["teacher"]["last_refresh"]
    _set_rng_state(ck["rng"])
    if same_data:
        stream.load_state(ck["data"])
    return int(ck["step"])


def resume(cfg: TrainConfig, *, wrapped: nn.Module, optimizer: torch.optim.Optimizer, teacher: Teacher,
           stream: BatchStream, world: int, log: Callable[[str], None]) -> int:
    """The step to start from: 0, or the step of ``<run.out>``'s latest checkpoint after loading it
    (refused with ValueError when it was written by another experiment's config)."""
    ck = latest_checkpoint(Path(cfg.run.out))
    if ck is None:
        return 0
    saved = torch.load(ck, map_location="cpu", weights_only=False)["config"]
    _check_resumable(saved, to_dict(cfg), ck)
    same_data = saved["data"]["shards"] == cfg.data.shards
    start = load_checkpoint(ck, wrapped=wrapped, optimizer=optimizer, teacher=teacher, stream=stream,
                            world=world, same_data=same_data)
    log(f"resumed from {ck} at step {start}" + ("" if same_data else " (new shards: data from their start)"))
    return start


def _prune(ckdir: Path, keep: int) -> None:
    files = sorted(ckdir.glob("step-*.pt"))
    for f in files[:-keep] if keep > 0 else []:
        f.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- logging


class MetricsLog:
    """Per-step metrics to ``metrics.jsonl`` (and TensorBoard); rank 0 only."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # a resumed run drops what the killed run logged past its checkpoint
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] < start_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step)
            except ImportError:
                self.tb = None

    def write(self, m: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(m) + "\n")
        if self.tb is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, m["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# curve -> (panel title, y-axis label with its unit)
PLOTTED: dict[str, tuple[str, str]] = {
    "loss": ("loss", "loss per token (surrogate + λ·KL)"),
    "reward": ("reward", "mean reward of the batch"),
    "lambda": ("λ", "KL coefficient λ"),
    "kl_forward": ("forward KL (key spans)", "nats / token"),
    "kl_reverse": ("reverse KL (error spans)", "nats / token"),
    "kl_sampled_k3": ("sampled-token k3 KL", "nats / token"),
    "entropy": ("entropy", "nats / token"),
    "response_length": ("response length", "tokens"),
    "clip_frac": ("clipped ratios", "fraction of tokens"),
    "span_token_frac": ("span tokens", "fraction of tokens"),
    "grad_norm": ("gradient norm", "L2 norm before clipping"),
}
KL_CURVES = ("kl_forward", "kl_reverse", "kl_sampled_k3")


def plot_metrics(metrics_path: Path, png: Path, title: str = "") -> Path | None:
    """One PNG with a small panel per curve in ``PLOTTED`` that the run logged, each with labelled
    axes and units; a KL panel whose curve ends before the run does says where λ reached 0
    (the teacher is not run from there on)."""
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    fig = curves_figure(rows, title)
    if fig is None:
        return None
    fig.savefig(png, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png


def curves_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The figure of `plot_metrics` from metric rows (None when nothing is plottable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PLOTTED if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    cols = 3
    n_rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 2.9 * n_rows), squeeze=False)
    last_step = rows[-1]["step"]
    lam_zero = next((r["step"] for r in rows if r.get("lambda", 1.0) == 0.0), None)
    for ax, k in zip(axes.flat, keys):
        xs = [r["step"] for r in rows if k in r]
        ax.plot(xs, [r[k] for r in rows if k in r])
        ax.set_title(PLOTTED[k][0], fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel(PLOTTED[k][1], fontsize=7)
        ax.set_xlim(rows[0]["step"], max(last_step, rows[0]["step"] + 1))
        if k in KL_CURVES and lam_zero is not None and xs and xs[-1] < last_step:
            ax.axvline(lam_zero, color="grey", linestyle="--", linewidth=0.8)
            ax.text(0.98, 0.95, f"λ = 0 from step {lam_zero}:\nteacher off, no KL", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, color="dimgray")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, *, on_step: Callable[[dict[str, Any]], None] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train per `cfg`; resumes from ``<run.out>/checkpoints`` when a checkpoint is there.

    Writes ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``final/`` (model and
    tokenizer, ``save_pretrained``) and ``curves.png`` under ``run.out``. `on_step` receives each
    step's metrics (for progress bars). Returns ``{"out", "steps", "last": metrics}``.
    """
    # --- setup
    check_device(cfg)
    rank, world, device = setup_distributed(cfg)
    out = Path(cfg.run.out)
    reader = ShardReader(cfg.data.shards)
    template = teacher_template(cfg)
    prompt_key = f"teacher_prompt_ids_{template}"
    if template is not None and template not in reader.templates:
        raise ValueError(f"shards {cfg.data.shards} have no teacher template {template!r} (they hold "
                         f"{reader.templates}); rebuild them with --template {template}")
    stream = BatchStream(reader, cfg.data.groups_per_step, seed=cfg.data.seed)
    torch.manual_seed(cfg.optim.seed)
    # ids from another vocabulary: refuse before the weights load
    model, tokenizer = setup_model(cfg, device, lambda tok: check_tokenizer(reader.manifest, cfg.data.shards, tok))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if world > 1 and cfg.run.distributed == "fsdp" and cfg.method.teacher_sync != "live":
        raise ValueError("run.distributed=fsdp needs method.teacher_sync=live (a copied/EMA teacher is not sharded yet)")
    teacher = Teacher(model, mode=cfg.method.teacher_sync, refresh_every=cfg.method.sync_every,
                      ema_decay=cfg.method.ema_decay, chunk_rows=LOGPROB_CHUNK_ROWS)
    wrapped = wrap_distributed(PolicyScorer(model), cfg, world, device)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    start = resume(cfg, wrapped=wrapped, optimizer=optimizer, teacher=teacher, stream=stream, world=world, log=log)
    router = setup_skill_bank(cfg, tokenizer, prompt_key, out, start, rank)
    if rank == 0:  # only now: a start that fails above leaves no folder or config.yaml behind
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump(cfg))
        log(f"config:\n{dump(cfg)}")
    metrics_log = with_trackers(MetricsLog(out, start, cfg.run.tensorboard and "tensorboard" in cfg.run.report_to,
                                           enabled=rank == 0), cfg.run.report_to, to_dict(cfg), out, rank == 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    row = method_of(cfg.method.name)
    ctx = StepContext(cfg=cfg, row=row, channels=channels_of(row, cfg.method), teacher=teacher, wrapped=wrapped,
                      model=model, pad_id=pad_id, prompt_key=prompt_key, device=device, world=world)
    last: dict[str, Any] = {}

    # --- the loop
    for step in range(start, cfg.optim.steps):
        t0 = time.perf_counter()
        rows = ROUTE_TRANSFORMS[row.route](stream.next(), cfg.data.seed)  # Arrow, as read from the shards
        rows, bank_metrics = assign_skills(router, rows, step) if router is not None else (rows, {})
        lam = lambda_at(row, cfg.method, step)
        optimizer.zero_grad(set_to_none=True)
        sums = step_gradients(ctx, rows, lam, rank, autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        teacher.update(step + 1)  # copy every K optimizer steps, or EMA, or nothing (live)
        sums = _all_reduce(sums, world, device)
        metrics = _finish_metrics(sums, step=step, lam=lam, grad_norm=float(grad_norm), rows=rows,
                                  seconds=time.perf_counter() - t0, lr=cfg.optim.lr)
        metrics.update(bank_metrics)
        metrics_log.write(metrics)
        last = metrics
        if on_step is not None:
            on_step(metrics)
        every = cfg.run.checkpoint_every
        if (every and (step + 1) % every == 0) or step + 1 == cfg.optim.steps:
            save_checkpoint(out / "checkpoints" / f"step-{step + 1:06d}.pt", step=step + 1, wrapped=wrapped,
                            optimizer=optimizer, teacher=teacher, stream=stream, cfg=cfg, world=world, rank=rank)
            if rank == 0:
                _prune(out / "checkpoints", cfg.run.keep_checkpoints)
                if router is not None:  # the bank's arms move with the checkpoint (exact resume)
                    router.save()

    # --- cleanup
    metrics_log.close()
    final_state = _full_state(wrapped, world)
    if rank == 0:
        model.save_pretrained(out / "final", state_dict=final_state)
        tokenizer.save_pretrained(out / "final")
        if cfg.run.plot and (out / "metrics.jsonl").exists():
            plot_metrics(out / "metrics.jsonl", out / "curves.png", title=f"{cfg.method.name} — {out.name}")
    return {"out": str(out), "steps": cfg.optim.steps, "last": last}


def _check_resumable(saved: dict, now: dict, path: Path) -> None:
    """A checkpoint resumes only the same experiment: all but steps/out/data.shards must agree."""
    for section in ("method", "optim", "model"):
        a = {k: v for k, v in saved[section].items() if k not in ("steps",)}
        b = {k: v for k, v in now[section].items() if k not in ("steps",)}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"{path} was written with a different {section} config ({', '.join(diff)}); "
                             "use a new run.out or the same config")


def _accumulate(sums: dict[str, float], loss_metrics: dict[str, float], kl_stats: dict[str, float], t: MicroBatch,
                ent_BT: Tensor, *, n_tokens_mb: int, num_tokens: int, num_seqs: int) -> None:
    """Add a micro-batch's metrics: additive loss parts as they are (already globally normalised),
    per-token means weighted by the micro-batch's share of the step's tokens."""
    share = n_tokens_mb / max(num_tokens, 1)
    for k, v in loss_metrics.items():
        sums[k] = sums.get(k, 0.0) + (v if k in ADDITIVE_METRICS else v * share)
    for k, v in kl_stats.items():
        sums[k] = sums.get(k, 0.0) + v
    mask = t.response_mask_BT
    sums["entropy_sum"] = sums.get("entropy_sum", 0.0) + float(ent_BT[mask].sum())
    sums["span_tokens"] = sums.get("span_tokens", 0.0) + float(((t.route_BT > 0) & mask).sum())


def _all_reduce(sums: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world == 1:
        return sums
    keys = sorted(sums)
    v = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(v)
    return dict(zip(keys, v.tolist()))


def _num_tokens(rows: pa.Table) -> int:
    return int(pc.sum(pc.list_value_length(rows.column("response_ids"))).as_py() or 0)


def assign_skills(router: Any, rows: pa.Table, step: int) -> tuple[pa.Table, dict[str, float]]:
    """The skill bank's `assign` on the columns it reads; its teacher prompts replace the batch's."""
    key = router.prompt_key
    out, metrics = router.assign(rows.select(["rollout_id", "prompt_id", "reward", "prompt_ids", key]).to_pylist(), step)
    i = rows.schema.get_field_index(key)
    return rows.set_column(i, rows.schema.field(i), pa.array([r[key] for r in out], rows.schema.field(i).type)), metrics


def _finish_metrics(sums: dict[str, float], *, step: int, lam: float, grad_norm: float, rows: pa.Table,
                    seconds: float, lr: float) -> dict[str, Any]:
    n_tok = _num_tokens(rows)
    out: dict[str, Any] = {"step": step}
    for k, v in sums.items():
        if k.endswith(("_sum", "_n")) or k in ("span_tokens",):
            continue
        out[k] = v
    out.pop("kl_coef", None)
    out.pop("coef", None)
    for ch in ("forward", "reverse"):
        if sums.get(f"kl_{ch}_n", 0) > 0:
            out[f"kl_{ch}"] = sums[f"kl_{ch}_sum"] / sums[f"kl_{ch}_n"]
    out.update(
        **{"lambda": lam},
        entropy=sums.get("entropy_sum", 0.0) / max(n_tok, 1),
        span_token_frac=sums.get("span_tokens", 0.0) / max(n_tok, 1),
        response_length=n_tok / max(rows.num_rows, 1),
        reward=float(np.mean(rows.column("reward").to_numpy().astype(np.float64))),
        accuracy=float(np.mean(rows.column("correct").to_numpy(zero_copy_only=False).astype(bool))),
        grad_norm=grad_norm, lr=lr, seconds=seconds,
    )
    return out
