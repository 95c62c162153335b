"""reasoning-gym as a prompt source and verifier (issue 15, item 3): the CLI writes one group per
task entry with the entry stored in `reference`, and the verifier extracts the final answer before
the task's own `score_answer` judges it."""

from __future__ import annotations

import json

import pytest

from datastore import Store
from train.cli import main
from train.rollouts.reasoning_gym_tasks import extract_answer, parse_spec, task_rows
from train.rollouts.verify import VERIFIERS

SPEC = "reasoning-gym:chain_sum?size=6&seed=3"


def test_generate_toy_on_chain_sum_writes_12_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["rollouts", "generate", "--model", "toy", "--prompts", SPEC, "--verifier", "reasoning-gym",
                 "-n", "2", "--store", "S", "--max-new-tokens", "24"]) == 0
    t = Store("S").read()
    assert t.num_rows == 12 and set(t["verifier"].to_pylist()) == {"reasoning-gym"}
    refs = [json.loads(r) for r in t["reference"].to_pylist()]
    assert {r["task"] for r in refs} == {"chain_sum"} and sorted({r["index"] for r in refs}) == list(range(6))
    assert all(r["metadata"]["source_dataset"] == "chain_sum" and r["config"] == {"size": 6, "seed": 3} for r in refs)
    for row, ref in zip(t.to_pylist(), refs):  # the stored reward is the task's score of the extracted answer
        assert row["reward"] == VERIFIERS["reasoning-gym"](row["response"], row["reference"])[0]
        assert "State the final answer" in row["prompt"]


def _chain_sum_reference():
    rows, _ = task_rows(SPEC)
    ref = json.loads(rows[0]["reference"])
    assert ref["answer"] == "214"  # 57 + 87 + 70
    return rows[0]["reference"]


@pytest.mark.parametrize(
    "response,correct",
    [
        ("57 + 87 + 70 = 214", True),  # last number
        ("<answer>214</answer>", True),
        ("I think <answer>200</answer> no wait <answer>214</answer>", True),  # the last tag
        ("\\boxed{214}", True),
        ("Answer: 214.", True),
        ("**Answer:** \uff12\uff11\uff14", True),  # fullwidth digits, markdown
        ("The sum is 1\u00a0214", False),
        ("57 + 87 = 144, + 70 = 214. Check: 214 - 70 = 144", False),  # the last number counts
        ("The answer is 214, I am sure (checked 3 times)", False),
        ("no idea", False),
        ("", False),
    ],
)
def test_reasoning_gym_verifier_extracts_then_scores(response, correct):
    reward, ok = VERIFIERS["reasoning-gym"](response, _chain_sum_reference())
    assert ok == correct and (reward == 1.0) == correct and 0.0 <= reward <= 1.0  # partial credit is the task's


def test_extract_answer_non_numeric_takes_last_line():
    assert extract_answer("thinking\nfoo bar\n", numeric=False) == "foo bar"
    assert extract_answer("<answer> \u22125 </answer>", numeric=False) == "-5"


@pytest.mark.parametrize(
    "spec,error",
    [("reasoning-gym:", "expected reasoning-gym:TASK"), ("reasoning-gym:no_such_task", "unknown reasoning-gym task")],
)
def test_bad_specs_are_refused(spec, error):
    with pytest.raises(ValueError, match=error):
        parse_spec(spec)


def test_spec_values_are_typed_and_bad_reference_refused():
    assert parse_spec("reasoning-gym:chain_sum?size=4&seed=1&min_terms=2")[1] == {"size": 4, "seed": 1, "min_terms": 2}
    with pytest.raises(ValueError, match="not a reasoning-gym entry"):
        VERIFIERS["reasoning-gym"]("42", "42")
