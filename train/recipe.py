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

import copy
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from train import losses as L
from train.config import TrainConfig, dump, to_dict
from train.shards import BatchStream, ShardReader

LOGPROB_CHUNK_ROWS = 512  # rows of [N, V] logits alive at once when scoring sampled tokens
ADDITIVE_METRICS = ("loss", "pg_loss", "grpo_loss", "kl_term", "kl_sampled_k3")


# ----------------------------------------------------------------------------------- scoring


class Scorer(nn.Module):
    """A causal LM seen as a scorer of response tokens.

    ``forward`` returns, for responses placed right after (left-padded) prompts:
    sampled-token log-probs ``[B, T]`` (nats, with gradient when enabled), their entropies ``[B, T]``
    (nats, detached), and full logits ``[N, V]`` only at the ``select_BT`` positions. Wrapping the
    whole scoring in one module lets DDP/FSDP see a single forward per micro-batch.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, response_ids_BT: Tensor,
                select_BT: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        base = self.lm.get_decoder()
        head = self.lm.get_output_embeddings()
        T = response_ids_BT.shape[1]
        P = input_ids.shape[1] - T
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
        h_BTH = hidden[:, P - 1: P - 1 + T]  # position p predicts token p + 1
        B, _, H = h_BTH.shape
        h_NH = h_BTH.reshape(B * T, H)
        ids_N = response_ids_BT.reshape(B * T)
        lps, ents = [], []
        for s in range(0, B * T, LOGPROB_CHUNK_ROWS):
            args = (h_NH[s: s + LOGPROB_CHUNK_ROWS], ids_N[s: s + LOGPROB_CHUNK_ROWS])
            if torch.is_grad_enabled():
                lp, ent = torch.utils.checkpoint.checkpoint(_sampled_logprobs, head, *args, use_reentrant=False)
            else:
                lp, ent = _sampled_logprobs(head, *args)
            lps.append(lp)
            ents.append(ent)
        logprobs_BT = torch.cat(lps).reshape(B, T)
        entropy_BT = torch.cat(ents).reshape(B, T)
        logits_NV = head(h_BTH[select_BT]).float() if select_BT is not None else None
        return logprobs_BT, entropy_BT, logits_NV


def _sampled_logprobs(head: nn.Module, h_NH: Tensor, ids_N: Tensor) -> tuple[Tensor, Tensor]:
    logits_NV = head(h_NH).float()
    lse_N = torch.logsumexp(logits_NV, dim=-1)
    lp_N = logits_NV.gather(-1, ids_N.long().unsqueeze(-1)).squeeze(-1) - lse_N
    with torch.no_grad():
        p_NV = torch.softmax(logits_NV, dim=-1)
        ent_N = lse_N - (p_NV * logits_NV).sum(-1)
    return lp_N, ent_N.detach()


# ------------------------------------------------------------------------------------ batches


def collate(rows: list[dict], prompt_key: str, pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Pack rows as [left-padded prompt | right-padded response].

    All responses start at the same column, so response token t of every row is predicted at
    column ``P - 1 + t``; position ids count real tokens only, so padding changes nothing.
    """
    P = max(len(r[prompt_key]) for r in rows)
    T = max(max(len(r["response_ids"]) for r in rows), 1)
    B = len(rows)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    resp = torch.zeros((B, T), dtype=torch.long)
    old = torch.zeros((B, T), dtype=torch.float32)
    route = torch.zeros((B, T), dtype=torch.int8)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for i, r in enumerate(rows):
        p, y = r[prompt_key], r["response_ids"]
        ids[i, P - len(p): P] = torch.tensor(p, dtype=torch.long)
        ids[i, P: P + len(y)] = torch.tensor(y, dtype=torch.long)
        attn[i, P - len(p): P + len(y)] = 1
        resp[i, : len(y)] = torch.tensor(y, dtype=torch.long)
        old[i, : len(y)] = torch.tensor(r["old_logprobs"], dtype=torch.float32)
        route[i, : len(y)] = torch.tensor(r["route"], dtype=torch.int8)
        mask[i, : len(y)] = True
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": ids, "attention_mask": attn, "position_ids": pos, "response_ids_BT": resp,
           "old_logprobs_BT": old, "route_BT": route, "response_mask_BT": mask,
           "correct_B": torch.tensor([bool(r["correct"]) for r in rows]),
           "reward_B": torch.tensor([float(r["reward"]) for r in rows])}
    return {k: v.to(device) for k, v in out.items()}


# ------------------------------------------------------------------------------------ methods
# Each method says where it needs full student/teacher distributions and what extra inputs its
# loss takes; the loop itself never branches on the method's name.


def _kl_positions(t: dict, cfg: TrainConfig, lam: float, method: str) -> Tensor | None:
    if lam == 0:
        return None
    if method == "opd":
        return t["response_mask_BT"]
    m = cfg.method
    return L.active_span_mask(t["route_BT"], t["correct_B"], key=m.key_channel, error=m.error_channel) \
        & t["response_mask_BT"]


def _span_kl(t: dict, select_BT: Tensor, student_NV: Tensor, teacher_NV: Tensor, cfg: TrainConfig,
             method: str) -> tuple[Tensor, dict[str, float]]:
    """KL_t at the selected positions, scattered to [B, T]: forward on key spans of correct
    rollouts, reverse on error spans of incorrect ones (OPD: forward everywhere)."""
    clip = cfg.method.term_clip
    if method == "opd":
        kl_N = L.forward_kl(teacher_NV, student_NV, clip)
        is_rev_N = torch.zeros_like(kl_N, dtype=torch.bool)
    else:
        is_rev_N = ((t["route_BT"] == 2) & ~t["correct_B"].unsqueeze(-1))[select_BT]
        kl_N = torch.where(is_rev_N, L.reverse_kl(teacher_NV, student_NV, clip),
                           L.forward_kl(teacher_NV, student_NV, clip))
    span_kl_BT = torch.zeros(select_BT.shape, dtype=kl_N.dtype, device=kl_N.device)
    span_kl_BT = span_kl_BT.masked_scatter(select_BT, kl_N)
    with torch.no_grad():
        stats = {"kl_forward_sum": float(kl_N[~is_rev_N].sum()), "kl_forward_n": float((~is_rev_N).sum()),
                 "kl_reverse_sum": float(kl_N[is_rev_N].sum()), "kl_reverse_n": float(is_rev_N.sum())}
    return span_kl_BT, stats


def _lambda(cfg: TrainConfig, step: int) -> float:
    m = cfg.method
    if m.name == "trace":
        return L.kl_schedule(step, w0=m.kl_w0, hold=m.kl_hold, end=m.kl_end)
    if m.name == "opd":
        return L.kl_schedule(step, w0=m.opd_coef, hold=m.kl_hold, end=m.kl_end)
    if m.name == "skill_sd":
        return m.skill_coef
    return 0.0


def teacher_template(cfg: TrainConfig) -> str:
    t = cfg.method.teacher_template
    if t == "auto":
        return "skill" if cfg.method.name == "skill_sd" else "reference"
    return t


# --------------------------------------------------------------------------------- the teacher


class Teacher:
    """The student's weights under a privileged prompt: ``live`` (the student itself, no grad), a
    copy refreshed every K steps, or an EMA of the student. Copies are kept full on every rank."""

    def __init__(self, student: nn.Module, sync: str, every: int, decay: float):
        self.sync, self.every, self.decay = sync, every, decay
        self.student = student
        self.model = student if sync == "live" else _frozen_copy(student)

    def after_step(self, step: int, student_state: Callable[[], dict[str, Tensor]]) -> None:
        """Refresh after optimizer step `step` (0-based): copy when (step+1) % K == 0, or EMA."""
        if self.sync == "copy" and (step + 1) % self.every == 0:
            self.model.load_state_dict(student_state())
        elif self.sync == "ema":
            with torch.no_grad():
                for t, s in zip(self.model.state_dict().values(), student_state().values()):
                    if t.is_floating_point():
                        t.lerp_(s.to(t.device, t.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor] | None:
        return None if self.sync == "live" else self.model.state_dict()

    def load_state_dict(self, sd: dict[str, Tensor] | None) -> None:
        if sd is not None and self.sync != "live":
            self.model.load_state_dict(sd)


def _frozen_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    m.requires_grad_(False)
    m.eval()
    return m


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


def setup_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cfg.model.path:
        raise ValueError("model.path is empty: point it at a save_pretrained folder (model + tokenizer)")
    if not Path(cfg.model.path).exists():
        raise FileNotFoundError(f"model.path {cfg.model.path} does not exist")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype).to(device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    return model, tokenizer


def wrap_distributed(scorer: Scorer, cfg: TrainConfig, world: int, device: torch.device) -> nn.Module:
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
    torch.save({"step": step, "model": model, "optimizer": opt, "teacher": teacher.state_dict(),
                "rng": _rng_state(), "data": stream.state(), "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact
    (path.parent / "latest").write_text(path.name)


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
    teacher.load_state_dict(ck["teacher"])
    _set_rng_state(ck["rng"])
    if same_data:
        stream.load_state(ck["data"])
    return int(ck["step"])


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


PLOTTED = ("loss", "reward", "lambda", "kl_forward", "kl_reverse", "entropy", "response_length",
           "clip_frac", "span_token_frac", "grad_norm")


def plot_metrics(metrics_path: Path, png: Path, title: str = "") -> Path | None:
    """One PNG with a small panel per curve in ``PLOTTED`` that the run logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    keys = [k for k in PLOTTED if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4 * cols, 2.6 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, k in zip(axes.flat, keys):
        xs = [r["step"] for r in rows if k in r]
        ax.plot(xs, [r[k] for r in rows if k in r])
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


# -------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, *, on_step: Callable[[dict[str, Any]], None] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train per `cfg`; resumes from ``<run.out>/checkpoints`` when a checkpoint is there.

    Writes ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``final/`` (model and
    tokenizer, ``save_pretrained``) and ``curves.png`` under ``run.out``. `on_step` receives each
    step's metrics (for progress bars). Returns ``{"out", "steps", "last": metrics}``.
    """
    # --- setup
    rank, world, device = setup_distributed(cfg)
    out = Path(cfg.run.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump(cfg))
        log(f"config:\n{dump(cfg)}")
    torch.manual_seed(cfg.optim.seed)
    model, tokenizer = setup_model(cfg, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    teacher = Teacher(model, cfg.method.teacher_sync, cfg.method.sync_every, cfg.method.ema_decay)
    teacher_scorer = Scorer(teacher.model)
    wrapped = wrap_distributed(Scorer(model), cfg, world, device)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    reader = ShardReader(cfg.data.shards)
    template = teacher_template(cfg)
    prompt_key = f"teacher_prompt_ids_{template}"
    if cfg.method.name != "grpo" and template not in reader.templates:
        raise ValueError(f"shards {cfg.data.shards} have no teacher template {template!r} (they hold "
                         f"{reader.templates}); rebuild them with --template {template}")
    stream = BatchStream(reader, cfg.data.groups_per_step, seed=cfg.data.seed)
    start = 0
    ck = latest_checkpoint(out)
    if ck is not None:
        saved = torch.load(ck, map_location="cpu", weights_only=False)["config"]
        _check_resumable(saved, to_dict(cfg), ck)
        same_data = saved["data"]["shards"] == cfg.data.shards
        start = load_checkpoint(ck, wrapped=wrapped, optimizer=optimizer, teacher=teacher, stream=stream,
                                world=world, same_data=same_data)
        log(f"resumed from {ck} at step {start}" + ("" if same_data else " (new shards: data from their start)"))
    metrics_log = MetricsLog(out, start, cfg.run.tensorboard, enabled=rank == 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    method = cfg.method.name
    m = cfg.method
    last: dict[str, Any] = {}

    # --- the loop
    for step in range(start, cfg.optim.steps):
        t0 = time.perf_counter()
        rows = stream.next().to_pylist()
        advantages_B = L.group_advantages(torch.tensor([r["reward"] for r in rows]), [r["group_id"] for r in rows])
        num_tokens = sum(len(r["response_ids"]) for r in rows)  # global counts of this optimizer step
        num_seqs = len(rows)
        lo, hi = rank * len(rows) // world, (rank + 1) * len(rows) // world
        local_idx = list(range(lo, hi))
        lam = _lambda(cfg, step)
        needs_teacher = method == "skill_sd" or lam > 0
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        micro = [local_idx[s: s + cfg.data.micro_batch_size] for s in range(0, len(local_idx), cfg.data.micro_batch_size)]
        for k, idx in enumerate(micro):
            mb_rows = [rows[i] for i in idx]
            t = collate(mb_rows, "prompt_ids", pad_id, device)
            select_BT = _kl_positions(t, cfg, lam, method) if method in ("trace", "opd") else None
            sync_ctx = wrapped.no_sync() if (world > 1 and hasattr(wrapped, "no_sync") and k < len(micro) - 1) \
                else nullcontext()
            with sync_ctx:
                with autocast:
                    lp_BT, ent_BT, s_logits_NV = wrapped(t["input_ids"], t["attention_mask"], t["position_ids"],
                                                         t["response_ids_BT"], select_BT)
                    inputs: dict[str, Any] = dict(
                        logprobs_BT=lp_BT, old_logprobs_BT=t["old_logprobs_BT"],
                        advantages_B=advantages_B[idx].to(device), response_mask_BT=t["response_mask_BT"],
                        clip_low=m.clip_low, clip_high=m.clip_high, agg=m.agg, num_tokens=num_tokens,
                        num_seqs=num_seqs)
                    kl_stats: dict[str, float] = {}
                    if needs_teacher:
                        tt = collate(mb_rows, prompt_key, pad_id, device)
                        with torch.no_grad():
                            t_lp_BT, _, t_logits_NV = teacher_scorer(tt["input_ids"], tt["attention_mask"],
                                                                     tt["position_ids"], tt["response_ids_BT"], select_BT)
                        if select_BT is not None:
                            span_kl_BT, kl_stats = _span_kl(t, select_BT, s_logits_NV, t_logits_NV, cfg, method)
                            inputs.update(span_mask_BT=select_BT, span_kl_BT=span_kl_BT, token_kl_BT=span_kl_BT,
                                          kl_coef=lam, kl_coef_max=max(m.kl_w0 if method == "trace" else m.opd_coef, 1e-12))
                        inputs.update(teacher_logprobs_BT=t_lp_BT, coef=m.skill_coef)
                    elif method in ("trace", "opd"):
                        z = torch.zeros_like(t["response_mask_BT"])
                        inputs.update(span_mask_BT=z, span_kl_BT=z.float(), token_kl_BT=z.float(), kl_coef=0.0)
                    loss, lm = L.call_loss(method, **inputs)
                (loss * world).backward()
            _accumulate(sums, lm, kl_stats, t, ent_BT, n_tokens_mb=int(t["response_mask_BT"].sum()),
                        num_tokens=num_tokens, num_seqs=num_seqs)
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        teacher.after_step(step, lambda: _full_state(wrapped, world))
        sums = _all_reduce(sums, world, device)
        metrics = _finish_metrics(sums, step=step, lam=lam, grad_norm=float(grad_norm), rows=rows,
                                  seconds=time.perf_counter() - t0, lr=cfg.optim.lr)
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

    # --- cleanup
    metrics_log.close()
    final_state = _full_state(wrapped, world)
    if rank == 0:
        model.save_pretrained(out / "final", state_dict=final_state)
        tokenizer.save_pretrained(out / "final")
        if cfg.run.plot and (out / "metrics.jsonl").exists():
            plot_metrics(out / "metrics.jsonl", out / "curves.png", title=f"{method} — {out.name}")
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


def _accumulate(sums: dict[str, float], loss_metrics: dict[str, float], kl_stats: dict[str, float], t: dict,
                ent_BT: Tensor, *, n_tokens_mb: int, num_tokens: int, num_seqs: int) -> None:
    """Add a micro-batch's metrics: additive loss parts as they are (already globally normalised),
    per-token means weighted by the micro-batch's share of the step's tokens."""
    share = n_tokens_mb / max(num_tokens, 1)
    for k, v in loss_metrics.items():
        sums[k] = sums.get(k, 0.0) + (v if k in ADDITIVE_METRICS else v * share)
    for k, v in kl_stats.items():
        sums[k] = sums.get(k, 0.0) + v
    mask = t["response_mask_BT"]
    sums["entropy_sum"] = sums.get("entropy_sum", 0.0) + float(ent_BT[mask].sum())
    sums["span_tokens"] = sums.get("span_tokens", 0.0) + float(((t["route_BT"] > 0) & mask).sum())


def _all_reduce(sums: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world == 1:
        return sums
    keys = sorted(sums)
    v = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(v)
    return dict(zip(keys, v.tolist()))


def _finish_metrics(sums: dict[str, float], *, step: int, lam: float, grad_norm: float, rows: list[dict],
                    seconds: float, lr: float) -> dict[str, Any]:
    n_tok = sum(len(r["response_ids"]) for r in rows)
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
        response_length=n_tok / max(len(rows), 1),
        reward=float(np.mean([r["reward"] for r in rows])),
        accuracy=float(np.mean([bool(r["correct"]) for r in rows])),
        grad_norm=grad_norm, lr=lr, seconds=seconds,
    )
    return out
