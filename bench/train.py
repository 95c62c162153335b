"""Benchmark: one training step of TRACE vs GRPO vs all-token OPD, same model, same batch.

Each method runs in its own child process through the real loop (``train.recipe.train``) on the
same synthetic shards (random tokens, 25% of response tokens in key spans of correct rollouts or
error spans of incorrect ones, teacher prompt 64 tokens longer than the student's). Time is the
median per-step wall time after a warm-up step; memory is the step's peak over the process's
memory after setup (CPU: peak RSS from ``getrusage`` minus the RSS of a zero-step run; CUDA:
``max_memory_allocated``); torch runs on one thread (BENCH_THREADS) so a busy machine disturbs
the ratios less. TRACE runs with λ > 0 (its teacher forward and span KL are on), OPD
puts the KL channel on every response token.

    python bench/train.py            # vocab 151936, hidden 256, 2 layers, 8 × 512 response tokens
    python bench/train.py --quick    # vocab 8192, hidden 128, 4 × 128 tokens (< 1 minute)

Ends with one JSON line: trace_time_ratio and trace_memory_ratio (vs GRPO; goals ≤ 1.4 and
≤ 1.15), and the same against OPD.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_world(d: Path, vocab: int, hidden: int, layers: int, batch: int, resp_len: int, prompt_len: int) -> None:
    """A random Qwen2 (+ the toy tokenizer for pad/eos ids) and one shard of `batch` rollouts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from train.shards import shard_schema
    from train.toy import build_tokenizer

    tok = build_tokenizer(d / "model")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(d / "model")
    rng = np.random.default_rng(0)
    rows = []
    group = 4
    for i in range(batch):
        correct = i % 2 == 0
        route = np.zeros(resp_len, dtype=np.int8)
        start = int(rng.integers(0, resp_len * 3 // 4))
        route[start: start + resp_len // 4] = 1 if correct else 2  # 25% span tokens
        prompt = rng.integers(10, vocab, prompt_len).tolist()
        rows.append(dict(
            rollout_id=f"r{i}", group_id=f"g{i // group}", prompt_id=f"p{i // group}", prompt_ids=prompt,
            response_ids=rng.integers(10, vocab, resp_len).tolist(),
            old_logprobs=(-rng.uniform(8, 12, resp_len)).astype(np.float32).tolist(),
            reward=1.0 if correct else 0.0, correct=correct, route=route.tolist(), span_source="rule",
            teacher_prompt_ids_reference=prompt + rng.integers(10, vocab, 64).tolist()))
    (d / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema(("reference",))), d / "shards" / "shard-00000.parquet")
    (d / "shards" / "manifest.json").write_text(json.dumps(
        {"shards": [{"file": "shard-00000.parquet", "rows": batch}], "templates": ["reference"]}))


def child(d: Path, method: str, steps: int, groups: int) -> dict:
    """Run `steps` steps of `method` in this process; print per-step seconds and peak memory."""
    import torch

    from train.config import load_config
    from train.recipe import train

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    cuda = torch.cuda.is_available()
    cfg = load_config(None, [
        f"model.path={d / 'model'}", f"data.shards={d / 'shards'}", f"data.groups_per_step={groups}",
        f"data.micro_batch_size={groups * 4}", f"method.name={method}", "method.error_channel=true",
        "method.kl_hold=100", "method.kl_end=200", f"optim.steps={steps}", f"run.out={d / ('run-' + method)}",
        "run.tensorboard=false", "run.plot=false", "run.checkpoint_every=1000",
        *os.environ.get("BENCH_OVERRIDES", "").split()])  # e.g. model.dtype=bfloat16 (bench/gpu_check.py)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    secs: list[float] = []
    train(cfg, log=lambda s: None, on_step=lambda m: secs.append(m["seconds"]))
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "seconds": secs, "peak_bytes": peak, "device": "cuda" if cuda else "cpu"}


def run_child(d: Path, method: str, steps: int, groups: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--dir", str(d), "--steps", str(steps),
                          "--groups", str(groups)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench child {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=4, help="steps per method (the first is a warm-up)")
    ap.add_argument("--groups", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.dir), args.child, args.steps, args.groups)))
        return
    size = (dict(vocab=8192, hidden=128, layers=2, batch=8, resp_len=128, prompt_len=32) if args.quick else
            dict(vocab=151936, hidden=256, layers=2, batch=8, resp_len=512, prompt_len=64))
    steps = 3 if args.quick else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_world(d, **size)
        groups = size["batch"] // 4
        base = run_child(d, "grpo", 0, groups)  # setup only: the memory every run starts from
        res = {m: run_child(d, m, steps, groups) for m in ("grpo", "trace", "opd")}
    dev = res["grpo"]["device"]
    base_b = 0 if dev == "cuda" else base["peak_bytes"]
    t = {m: statistics.median(r["seconds"][1:] or r["seconds"]) for m, r in res.items()}
    mem = {m: max(r["peak_bytes"] - base_b, 1) for m, r in res.items()}
    print(f"device {dev}; vocab {size['vocab']}, hidden {size['hidden']}, {size['layers']} layers, "
          f"{size['batch']} rollouts × {size['resp_len']} response tokens, 25% span tokens")
    print(f"{'method':<8} {'step s':>8} {'peak MiB':>10} {'time ×GRPO':>11} {'mem ×GRPO':>10}")
    for m in ("grpo", "trace", "opd"):
        print(f"{m:<8} {t[m]:>8.3f} {mem[m] / 2**20:>10.1f} {t[m] / t['grpo']:>11.2f} {mem[m] / mem['grpo']:>10.2f}")
    figures = {
        "device": dev, **{k: size[k] for k in ("vocab", "hidden", "batch", "resp_len")},
        "grpo_step_s": round(t["grpo"], 4), "trace_step_s": round(t["trace"], 4), "opd_step_s": round(t["opd"], 4),
        "trace_time_ratio": round(t["trace"] / t["grpo"], 3), "trace_memory_ratio": round(mem["trace"] / mem["grpo"], 3),
        "trace_vs_opd_time_ratio": round(t["trace"] / t["opd"], 3),
        "trace_vs_opd_memory_ratio": round(mem["trace"] / mem["opd"], 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
