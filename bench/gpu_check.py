"""GPU check, one command: the training paths at a real model's size (Qwen3-1.7B's shape, bf16).

Needs only torch, transformers, accelerate and pyarrow (the GPU machine has torch 2.11,
transformers 5.17, no vLLM, no internet); the model is random-init, nothing is downloaded.

    python bench/gpu_check.py            # one GPU: Qwen3-1.7B shape, bf16 (budget <= 8 min on one H200)
    python bench/gpu_check.py --quick    # tiny sizes, float32, runs on CPU (the CI smoke test)

Measures, each in its own child process (so peak memory is the part's own):
1. one TRACE step vs one GRPO step through the real loop (`bench/train.py` children, `train.recipe`):
   median step seconds after a warm-up step, peak memory, and the bench's ratios at this size;
2. gathered span scoring (`train.scoring.chunked_token_logprobs` on every response token plus
   `chunked_topk` on the 25% span tokens) vs materialising the full logits at 8k tokens, vocab 151,936;
3. the FSDP2 path (`fully_shard` per decoder layer, then the root, as `train.recipe`) on one device in
   a one-process group: one optimizer step, its loss equal to the unsharded model's.
Prints one JSON line of figures (seconds, bytes, ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Qwen3-1.7B (config.json of Qwen/Qwen3-1.7B): 28 layers, hidden 2048, FFN 6144, 16 heads of 128, 8 KV heads.
QWEN3_1P7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                  max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6)
TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, tie_word_embeddings=True, max_position_embeddings=4096)


def _qwen3(shape: dict, dtype, device):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen3ForCausalLM(Qwen3Config(**shape)).to(dtype)


def _peak(device: str) -> int:
    import resource

    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def part_train(quick: bool) -> dict:
    """TRACE vs GRPO steps through bench/train.py's children on a model of the target shape."""
    import statistics

    import torch

    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    make_world, run_child = bench_train.make_world, bench_train.run_child

    shape = TINY if quick else QWEN3_1P7B
    size = dict(batch=8, resp_len=128 if quick else 512, prompt_len=32 if quick else 64)
    dtype = "float32" if quick else "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_world(d, vocab=shape["vocab_size"], hidden=64, layers=1, **size)  # shards + tokenizer
        _qwen3(shape, getattr(torch, dtype), "cpu").save_pretrained(d / "model")
        os.environ["BENCH_OVERRIDES"] = f"model.dtype={dtype}"
        os.environ.setdefault("BENCH_THREADS", str(min(8, os.cpu_count() or 1)))
        base = run_child(d, "grpo", 0, 2)
        res = {m: run_child(d, m, 2 if quick else 3, 2) for m in ("grpo", "trace")}
    dev = res["grpo"]["device"]
    t = {m: statistics.median(r["seconds"][1:] or r["seconds"]) for m, r in res.items()}
    mem = {m: max(r["peak_bytes"] - (0 if dev == "cuda" else base["peak_bytes"]), 1) for m, r in res.items()}
    return {"train_device": dev, "train_dtype": dtype, "train_rollouts": size["batch"],
            "train_resp_len": size["resp_len"], "grpo_step_s": round(t["grpo"], 4),
            "trace_step_s": round(t["trace"], 4), "grpo_peak_bytes": mem["grpo"], "trace_peak_bytes": mem["trace"],
            "trace_time_ratio": round(t["trace"] / t["grpo"], 3),
            "trace_memory_ratio": round(mem["trace"] / mem["grpo"], 3)}


def part_scoring(quick: bool, device: str) -> dict:
    """Gathered (chunked) scoring vs full logits over N response tokens at the full vocabulary."""
    import torch

    from train.scoring import chunked_token_logprobs, chunked_topk

    n, hidden, vocab = (512, 64, 4096) if quick else (8192, 2048, 151936)
    dtype = torch.float32 if quick else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
    h = torch.randn(n, hidden, device=device, dtype=dtype, generator=g)
    ids = torch.randint(0, vocab, (n,), device=device, generator=g)
    span = torch.rand(n, device=device, generator=g) < 0.25
    out = {"scoring_tokens": n, "scoring_vocab": vocab}
    with torch.no_grad():
        for name in ("full", "gathered"):
            _reset(device)
            t0 = time.perf_counter()
            if name == "full":
                logp = torch.log_softmax(head(h).float(), -1)
                lp = logp.gather(-1, ids[:, None]).squeeze(-1)
                top = torch.topk(logp[span], 20, -1).values
                del logp
            else:
                lp, _ = chunked_token_logprobs(h, ids, head)
                top, _ = chunked_topk(h[span], head, 20)
            if device == "cuda":
                torch.cuda.synchronize()
            out[f"scoring_{name}_s"] = round(time.perf_counter() - t0, 4)
            out[f"scoring_{name}_peak_bytes"] = _peak(device)
            out[f"scoring_{name}_lp"] = lp.float()
            out[f"scoring_{name}_top"] = top.float()
    diff = max((out["scoring_full_lp"] - out["scoring_gathered_lp"]).abs().max().item(),
               (out["scoring_full_top"] - out["scoring_gathered_top"]).abs().max().item())
    for k in ("lp", "top"):
        out.pop(f"scoring_full_{k}"), out.pop(f"scoring_gathered_{k}")
    out["scoring_max_abs_diff"] = diff
    return out


def part_fsdp(quick: bool, device: str) -> dict:
    """One optimizer step with FSDP2 in a one-process group; its loss vs the plain model's."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    shape = TINY if quick else QWEN3_1P7B
    dtype = torch.float32 if quick else torch.bfloat16
    T = 128 if quick else 1024
    ids = torch.randint(0, shape["vocab_size"], (2, T), generator=torch.Generator().manual_seed(1)).to(device)

    def step(model) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        # through the root module, so FSDP2's root hooks gather the embedding/head (tied) weights
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        opt.step()
        return float(loss)

    try:
        plain = step(_qwen3(shape, dtype, device))
        model = _qwen3(shape, dtype, device)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        _reset(device)
        t0 = time.perf_counter()
        sharded = step(model)
        secs = time.perf_counter() - t0
        return {"fsdp_loss": round(sharded, 6), "fsdp_plain_loss": round(plain, 6), "fsdp_step_s": round(secs, 4),
                "fsdp_peak_bytes": _peak(device), "fsdp_loss_equal": abs(sharded - plain) <= 1e-2 * max(1.0, abs(plain))}
    finally:
        dist.destroy_process_group()


def _child(part: str, quick: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", part, *(["--quick"] if quick else [])],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {f"{part}_error": out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, float32, CPU is fine")
    ap.add_argument("--part", choices=("train", "scoring", "fsdp"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.part:
        fn = {"train": lambda: part_train(args.quick), "scoring": lambda: part_scoring(args.quick, device),
              "fsdp": lambda: part_fsdp(args.quick, device)}[args.part]
        print(json.dumps(fn()))
        return
    if not args.quick and device != "cuda":
        sys.exit("gpu_check: no CUDA device here; run with --quick for the CPU smoke run")
    t0 = time.time()
    figures = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "quick": args.quick,
               "torch": torch.__version__, "model": "tiny" if args.quick else "Qwen3-1.7B shape, random init"}
    for part in ("scoring", "fsdp", "train"):
        figures.update(_child(part, args.quick))
    figures["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
