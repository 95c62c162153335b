"""Peak memory and time of one TRACE loss step: span-gathered chunked scoring vs naive full logits.

Both variants compute the same thing for a batch of B responses of T tokens: student log-probs of
the sampled tokens at every response position (with gradient), the teacher's distributions at the
span tokens (25% of them), the forward KL there, `trace_loss`, and the backward pass.

    (a) gathered: `train.scoring.score` + `span_kl` — sampled-token log-probs in checkpointed row
        chunks; hidden states gathered at span positions before the LM head; KL in row chunks.
    (b) naive:    what a GKD-style trainer does — `model(...).logits` for every position of
        student and teacher ([B, L, V] each), log-softmax over all of it, KL at every response
        token, then masked to the spans.

The teacher is the live student under `torch.no_grad()` with a longer (privileged) prompt.

How memory is measured, and why: torch allocates tensors in C++, so `tracemalloc` sees none of
them. Each variant runs in a fresh subprocess; after the model and inputs exist, the child resets
the kernel's resident-set high-water mark (`echo 5 > /proc/self/clear_refs`) and reads `VmHWM`
after the step: peak RSS − RSS before the step = everything the step really touched (tensors,
allocator slack, autograd buffers, parameter grads). Large tensors are mmap'd and returned to the
OS on free, so the high-water mark is the true concurrent peak. Where clear_refs is unavailable the
child falls back to `ru_maxrss` (then setup is included, which only understates the ratio).

The naive variant needs about 12 · B · (T + prompt) · V · 4 bytes; when that does not fit
in the memory available, it is skipped (never risk the OOM killer on a shared machine) and the
figures say so; pass a smaller `--batch`/`--resp-len` to compare where it fits.

Usage: python bench/losses.py [--quick]   (last line: one JSON object of figures)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's train/, not an installed one

FULL = dict(vocab=151_936, hidden=256, layers=2, batch=8, resp_len=1024, student_prompt=32, teacher_prompt=96, chunk_rows=0)
# --quick shrinks the batch 16×, so its chunks shrink too (a chunk as large as the whole batch
# would measure nothing); the full size uses the library default (2**25 logits per chunk).
QUICK = dict(vocab=65_536, hidden=256, layers=2, batch=2, resp_len=256, student_prompt=16, teacher_prompt=48, chunk_rows=128)


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _setup(cfg: dict):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from train.scoring import pack_batch

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"], num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * cfg["hidden"], max_position_embeddings=4096, tie_word_embeddings=True,
    )).float()
    g = torch.Generator().manual_seed(1)
    B, T, V = cfg["batch"], cfg["resp_len"], cfg["vocab"]
    resp = torch.randint(0, V, (B, T), generator=g).tolist()
    student = pack_batch(torch.randint(0, V, (B, cfg["student_prompt"]), generator=g).tolist(), resp)
    teacher = pack_batch(torch.randint(0, V, (B, cfg["teacher_prompt"]), generator=g).tolist(), resp)
    span_BT = torch.rand(B, T, generator=g) < 0.25
    return model, student, teacher, span_BT


def _step_gathered(model, student, teacher, span_BT, cfg):
    import torch

    cfg = {**cfg, "chunk_rows": cfg["chunk_rows"] or None}  # 0 → the library default (2**25 logits)

    from train.losses import trace_loss
    from train.scoring import rows_to_BT, score, span_kl

    with torch.no_grad():
        t = score(model, teacher, select_BT=span_BT, chunk_rows=cfg["chunk_rows"], token_logprobs=False)
    s = score(model, student, select_BT=span_BT, chunk_rows=cfg["chunk_rows"])
    kl_BT = rows_to_BT(span_kl(s, t, direction="forward", chunk_rows=cfg["chunk_rows"]), s.select_BT)
    return _loss(s.logprobs_BT, kl_BT, student, span_BT, trace_loss)


def _step_naive(model, student, teacher, span_BT, cfg):
    import torch

    from train.losses import forward_kl, trace_loss

    B, T, V = cfg["batch"], cfg["resp_len"], cfg["vocab"]
    Ps, Pt = cfg["student_prompt"], cfg["teacher_prompt"]
    s_logits = model(input_ids=student.input_ids_BL, attention_mask=student.attention_mask_BL).logits  # [B, Ps+T, V]
    with torch.no_grad():
        t_logits = model(input_ids=teacher.input_ids_BL, attention_mask=teacher.attention_mask_BL).logits  # [B, Pt+T, V]
    s_resp = s_logits[:, Ps - 1 : Ps - 1 + T]  # equal prompt lengths here: a view, no copy
    t_resp = t_logits[:, Pt - 1 : Pt - 1 + T]
    logp_BTV = torch.log_softmax(s_resp.float(), -1)
    lp_BT = logp_BTV.gather(-1, student.response_ids_BT.unsqueeze(-1)).squeeze(-1)
    kl_BT = forward_kl(t_resp.reshape(-1, V), s_resp.reshape(-1, V)).reshape(B, T)  # every token, masked later
    return _loss(lp_BT, kl_BT, student, span_BT, trace_loss)


def _loss(lp_BT, kl_BT, student, span_BT, trace_loss):
    import torch

    B = lp_BT.shape[0]
    loss, _ = trace_loss(
        logprobs_BT=lp_BT, old_logprobs_BT=lp_BT.detach() - 0.01, advantages_B=torch.linspace(-1, 1, B),
        response_mask_BT=student.response_mask_BT, span_mask_BT=span_BT, span_kl_BT=kl_BT, kl_coef=0.25,
    )
    return loss


def child(variant: str, cfg: dict) -> None:
    """Run one variant once and print its figures as JSON."""
    import torch

    model, student, teacher, span_BT = _setup(cfg)
    step = _step_gathered if variant == "gathered" else _step_naive
    gc.collect()
    base_kb = _kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_field = "VmHWM"
    except OSError:
        hwm_field = ""
    t0 = time.perf_counter()
    loss = step(model, student, teacher, span_BT, cfg)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak_kb = _kb(hwm_field) if hwm_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    print(json.dumps({"peak_mb": (peak_kb - base_kb) / 1024, "seconds": seconds, "loss": float(loss),
                      "grad_norm": float(grad_norm), "method": hwm_field or "ru_maxrss"}))


def run_variant(variant: str, cfg: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--cfg", json.dumps(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"bench/losses.py: variant {variant} failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller vocabulary (65k) and batch (512 tokens): under a minute")
    for k in FULL:
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {FULL[k]} (quick {QUICK[k]}); chunk-rows 0 = library default")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, json.loads(args.cfg))
        return
    cfg = dict(QUICK if args.quick else FULL)
    for k in FULL:
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    B, T, V = cfg["batch"], cfg["resp_len"], cfg["vocab"]
    # measured: the naive step peaks at ~10.4 [B, T, V] float32 tensors (logits, log-softmax,
    # KL terms, their grads); 12 with the prompt rows and a margin
    naive_need = 12 * B * (T + max(cfg["student_prompt"], cfg["teacher_prompt"])) * V * 4
    available = _mem_available_bytes()

    results = {"gathered": run_variant("gathered", cfg)}
    if naive_need < 0.6 * available:
        results["naive"] = run_variant("naive", cfg)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"TRACE step, B·T = {B * T} tokens, V = {V}, hidden {cfg['hidden']}, 25% span tokens")
    for col in ("variant", "peak MB (RSS Δ)", "seconds", "loss", "grad norm"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['peak_mb']:.0f}", f"{r['seconds']:.2f}", f"{r['loss']:.6f}", f"{r['grad_norm']:.6f}")
    console = Console(stderr=False)
    console.print(table)
    figures = {"bench": "losses", "tokens": B * T, "vocab": V, "hidden": cfg["hidden"], "chunk_rows": cfg["chunk_rows"] or 2**25 // V,
               "gathered_peak_mb": round(results["gathered"]["peak_mb"], 1), "gathered_s": round(results["gathered"]["seconds"], 3)}
    if "naive" in results:
        a, b = results["gathered"], results["naive"]
        figures.update(naive_peak_mb=round(b["peak_mb"], 1), naive_s=round(b["seconds"], 3),
                       memory_ratio=round(a["peak_mb"] / b["peak_mb"], 4), time_ratio=round(a["seconds"] / b["seconds"], 4),
                       loss_abs_diff=abs(a["loss"] - b["loss"]), grad_norm_rel_diff=abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"])
        console.print(f"memory ratio (a)/(b) = {figures['memory_ratio']:.3f}  (goal ≤ 0.3), time ratio = {figures['time_ratio']:.3f}")
    else:
        figures.update(memory_ratio=None, time_ratio=None,
                       naive_skipped=f"needs ~{naive_need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
        console.print(f"naive variant skipped: {figures['naive_skipped']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
