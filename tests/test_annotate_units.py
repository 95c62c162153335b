"""Pure pieces of annotation: the toy rule checker, the tolerant parser, answer -> span mapping,
prompt hashes, rule skills and the UCB skill bank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from annotate.parse import map_answer, parse_json
from annotate.templates import ERROR_TYPES, load
from annotate.skills import SkillBank
from train.toy.rule import RuleAnnotator, rule_annotate
from train.toy.skills import RuleSkills, toy_workflow
from spans import numbered, numbered_steps

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import toy_records  # noqa: E402

REF = "17 + 25 = 42\n42 * 3 = 126\nAnswer: 126"


def _marks(response, correct, reference=REF):
    spans, et = rule_annotate(response, reference, correct)
    assert all(response[s.start:s.end] == s.text for s in spans)
    return [(s.label, s.text) for s in spans], et


def test_rule_marks_the_steps_that_carry_the_answer_of_a_correct_rollout():
    assert _marks(REF, True) == ([("key", "126"), ("key", "126")], None)


@pytest.mark.parametrize("response, mark, etype", [
    ("17 + 25 = 43\n43 * 3 = 129\nAnswer: 129", "43", "arithmetic"),  # first slip, not the inherited one
    ("17 + 25 = 42\n42 * 3 = 127\nAnswer: 127", "127", "arithmetic"),
    ("17 + 25 = 42\n42 + 3 = 45\nAnswer: 45", "+ 3", "wrong_operation"),
    ("17 + 25 = 42\n42 * 3 = 126\nAnswer: 12", "12", "logic"),
    ("17 + 25 = 42\nAnswer: 42", "42", "incomplete"),
    ("17 + 25 = 42\n42 * 3 = 126", "126", "incomplete"),
])
def test_rule_marks_the_first_wrong_step_of_an_incorrect_rollout(response, mark, etype):
    (label, text), = _marks(response, False)[0]
    assert (label, text) == ("error", mark)
    assert _marks(response, False)[1] == etype and etype in ERROR_TYPES


def test_rule_spans_fit_tracess_25_percent_cap_on_toy_responses():
    for r in RuleAnnotator().annotate(toy_records(200, seed=0)):
        resp = next(x for x in toy_records(200, seed=0) if x["rollout_id"] == r.rollout_id)["response"]
        assert r.status == "ok" and sum(s.end - s.start for s in r.spans) <= 0.25 * len(resp)


def test_rule_skips_rows_without_a_verifier_result():
    rec = dict(toy_records(1)[0], correct=None)
    (r,) = RuleAnnotator().annotate([rec])
    assert r.status == "skipped" and "correct" in r.error


def test_tolerant_parser():
    assert parse_json('{"steps": []}') == ({"steps": []}, "ok", None)
    assert parse_json('```json\n{"steps": [],}\n```')[:2] == ({"steps": []}, "repaired")
    assert parse_json('Sure! Here it is: {"steps": [1]} hope it helps')[:2] == ({"steps": [1]}, "repaired")
    obj, status, err = parse_json('{"steps": [{"segment": 1')
    assert obj is None and status == "failed" and "invalid JSON" in err
    assert parse_json("[1, 2]")[1] == "failed" and parse_json("")[2] == "empty answer"


def _map(obj, response=REF, label="error"):
    return map_answer(obj, response, label, "api", "api:m")


def test_answer_mapping_prefers_the_quote_inside_the_named_segment():
    m = _map({"steps": [{"segment": 2, "quote": "126", "reason": ""}], "error_type": "arithmetic"})
    assert [(s.text, s.start) for s in m.spans] == [("126", 22)] and m.status == "ok"


def test_answer_mapping_never_trusts_the_number_alone():
    # a number out of range, repaired from a findable quote
    m = _map({"steps": [{"segment": 9, "quote": "42 * 3", "reason": ""}], "error_type": "logic"})
    assert [s.text for s in m.spans] == ["42 * 3"] and m.status == "repaired"
    # the quote lives in another segment than the number says: the quote wins
    m = _map({"steps": [{"segment": 1, "quote": "Answer: 126", "reason": ""}], "error_type": "logic"})
    assert [s.text for s in m.spans] == ["Answer: 126"] and "not in segment 1" in m.notes[0]
    # a quote found nowhere: the whole named segment, noted
    m = _map({"steps": [{"segment": 1, "quote": "no such words", "reason": ""}], "error_type": "logic"})
    assert [s.text for s in m.spans] == ["17 + 25 = 42"] and m.status == "repaired"
    # neither usable: the step is dropped and the row fails with the reason
    m = _map({"steps": [{"segment": 0, "quote": "", "reason": ""}], "error_type": "logic"})
    assert m.spans == [] and m.status == "failed" and "outside 1..3" in m.notes[0]


def test_unknown_error_type_becomes_other_and_key_answers_have_none():
    m = _map({"steps": [{"segment": 1, "quote": "42", "reason": ""}], "error_type": "cosmic rays"})
    assert m.error_type == "other" and m.status == "repaired"
    m = _map({"steps": [{"segment": 3, "quote": "126", "reason": ""}]}, label="key")
    assert m.error_type is None and m.spans[0].label == "key"


def test_model_sees_numbered_trimmed_segments():
    segs = numbered_steps(REF + "\n")
    assert [s.text for s in segs] == ["17 + 25 = 42", "42 * 3 = 126", "Answer: 126"]
    assert numbered(REF + "\n").splitlines()[0] == "[1] 17 + 25 = 42"


def test_prompt_hash_tracks_file_and_schema(tmp_path):
    key = load("key_spans")
    assert len(key.sha256) == 64 and key.sha256 != load("error_spans").sha256
    (tmp_path / "key_spans.md").write_text((Path(load.__wrapped__.__globals__["PROMPT_DIR"]) / "key_spans.md")
                                           .read_text().replace("few segments", "FEW segments"))
    assert load("key_spans", str(tmp_path)).sha256 != key.sha256
    msgs = load("error_spans").messages(prompt="P", reference="R", numbered="[1] x")
    assert "arithmetic" in msgs[0]["content"] and "[1] x" in msgs[1]["content"]
    with pytest.raises(KeyError):
        key.messages(prompt="P")


def test_rule_skills_per_group_name_mistakes_and_workflow_without_the_answer():
    recs = toy_records(8, seed=3, group=4)
    results = RuleSkills().annotate(recs)
    assert len({r.skill for r in results[:4]}) == 1  # one skill per prompt group
    skill = json.loads(results[0].skill)
    assert set(skill) == {"success_analysis", "mistake_analysis", "golden_workflow"}
    answer = recs[0]["reference"].rsplit("Answer: ", 1)[1]
    assert answer not in skill["golden_workflow"]
    assert toy_workflow(REF).startswith("1. add 17 and 25 2. multiply the previous result and 3")
    per_rollout = RuleSkills("rollout").annotate(recs[:4])
    assert all("of 1 attempt" in json.loads(r.skill)["success_analysis"] for r in per_rollout)


def test_skill_bank_ucb_tries_each_skill_then_exploits_the_best(tmp_path):
    bank = SkillBank(c=0.5)
    for s in ("A", "B", "C"):
        bank.add("p", s)
    bank.add("p", "A")  # duplicates are ignored
    picks = []
    for _ in range(30):
        i, skill = bank.select("p")
        picks.append(skill)
        bank.update("p", i, {"A": 0.2, "B": 0.9, "C": 0.1}[skill])
    assert picks[:3] == ["A", "B", "C"] and picks[-10:].count("B") >= 8
    bank.save(tmp_path / "bank.json")
    again = SkillBank.load(tmp_path / "bank.json")
    assert again.select("p") == bank.select("p") and SkillBank().select("none") is None
