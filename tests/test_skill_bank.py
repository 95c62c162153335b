"""Skill-SD's skill bank in the trainer: UCB selection moves toward the skill whose rounds earn
more, the teacher prompt rebuilt from shards equals the one shards are built with, and a run
records per row which skill its teacher saw and saves the bank back."""

from __future__ import annotations

import json

import pytest

from annotate.skills import SkillBank
from tests.train_fixtures import build_toy_shards, make_policy, one_thread, overrides
from train.skill_bank import SkillRouter, add_summaries, skill_sha

GOOD = json.dumps({"golden_workflow": "one operation per line, recheck each line, then Answer: N"})
BAD = json.dumps({"golden_workflow": "guess the answer"})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_shards(tmp_path_factory.mktemp("bank"))


def _rows(tok, prompt_id: str, reward: float, n: int = 4) -> list[dict]:
    from train.toy import render_prompt

    ids = tok(render_prompt("Compute 2 + 3.", tok), add_special_tokens=False)["input_ids"]
    return [{"rollout_id": f"{prompt_id}-{j}", "prompt_id": prompt_id, "prompt_ids": ids, "reward": reward}
            for j in range(n)]


@pytest.mark.parametrize("good_first", [True, False])
def test_ucb_moves_toward_the_skill_whose_rounds_earn_more(tmp_path, good_first):
    """A simulated student: after being taught with GOOD it earns 0.8 on the prompt, after BAD 0.2
    (the reward of the next round is what the skill is credited with)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_policy(tmp_path / "policy"))
    bank = tmp_path / "bank.json"
    add_summaries(bank, [{"prompt_id": "p", "skill": s} for s in ((GOOD, BAD) if good_first else (BAD, GOOD))])
    router = SkillRouter(bank, tok, "teacher_prompt_ids_skill", tmp_path / "log.jsonl", 0)
    reward, picks = 0.5, []
    for step in range(40):
        rows, _ = router.assign(_rows(tok, "p", reward), step)
        log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if json.loads(x)["step"] == step]
        shown = {x["skill_sha256"] for x in log}
        assert len(shown) == 1  # one skill per prompt group
        picked_good = shown == {skill_sha(GOOD)}
        picks.append(picked_good)
        reward = 0.8 if picked_good else 0.2
    assert 0 < sum(picks[:10]) < 10  # both arms are explored early
    assert sum(picks[-20:]) >= 17, picks  # UCB1 with c = 1: the 0.2-arm is pulled ever more rarely
    router.save()
    arms = SkillBank.load(bank).arms["p"]
    good = next(a for a in arms if a.skill == GOOD)
    assert good.pulls > 2 * next(a for a in arms if a.skill == BAD).pulls


def test_the_rebuilt_teacher_prompt_equals_the_shards_one(toy):
    """splice_privileged on the decoded student prompt gives the ids `shards build` writes."""
    from transformers import AutoTokenizer

    from train.shards import ShardReader
    from train.teacher import render_privileged, splice_privileged

    policy, shards = toy
    tok = AutoTokenizer.from_pretrained(policy)
    rows = ShardReader(shards).table.to_pylist()
    skill = json.dumps({"golden_workflow": "compute one step per line, then Answer: N"})  # the fixture's
    for r in rows:
        text = splice_privileged(tok, tok.decode(r["prompt_ids"], skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False),
                                 render_privileged({"skill": skill}, "skill"))
        assert tok(text, add_special_tokens=False)["input_ids"] == r["teacher_prompt_ids_skill"]


def test_a_run_records_each_rows_skill_and_saves_the_bank(toy, tmp_path):
    from train.config import load_config
    from train.recipe import train

    from train.shards import ShardReader

    policy, shards = toy
    prompts = sorted(set(ShardReader(shards).table.column("prompt_id").to_pylist()))
    bank = tmp_path / "bank.json"
    add_summaries(bank, [{"prompt_id": p, "skill": s} for p in prompts for s in (BAD, GOOD)])
    steps = 6  # 3 batches per epoch of 6 prompts: every prompt comes back once, so arms get credit
    cfg = load_config(None, overrides(policy, shards, tmp_path / "run", "method.name=skill_sd",
                                      f"method.skill_bank={bank}", f"optim.steps={steps}"))
    train(cfg, log=lambda s: None)
    log = [json.loads(x) for x in (tmp_path / "run" / "teacher_skills.jsonl").read_text().splitlines()]
    assert len(log) == steps * 2 * 4  # 2 groups × 4 rollouts per step
    assert {x["skill_index"] for x in log if x["step"] < 3} == {0}  # unpulled arms first: BAD, in order
    assert {x["skill_sha256"] for x in log if x["step"] >= 3} == {skill_sha(GOOD)}  # then the other arm
    saved = SkillBank.load(bank)
    assert sum(a.pulls for arms in saved.arms.values() for a in arms) == len(prompts)  # one credit per return
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["skill_bank_hits"] == 1.0 for m in metrics)
    assert "skill_credit" in metrics[3] and "skill_credit" not in metrics[0]
