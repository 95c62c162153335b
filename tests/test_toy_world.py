"""The toy world as one deletable package (`train/toy/`), and the shipped toy policy's capabilities.

The capability test measures the shipped policy on a small sample of held-out problems (not a timing
test): plain sampled accuracy in the issue's band (widened by three binomial standard errors for the
sample size), greedy accuracy with the trainer's `reference` teacher prompt, and in-process
`annotate self` agreeing with `annotate rule` (on the 120 rows of the figure in `toy_policy.json`).
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "train" / "toy"
TOY_MODULES = sorted(f"train.toy.{p.stem}" for p in TOY.glob("*.py") if p.stem not in ("__init__", "__main__")) + ["train.toy"]
# Generic modules that may look the toy world up, inside a function only (registries and shortcuts).
LAZY_REGISTRIES = {"annotate/cli.py", "annotate/__init__.py", "annotate/testing/scripted_server.py", "train/rollouts/prompts.py",
                   "train/cli_train.py", "train/demo.py", "train/online.py",
                   "train/model_names.py",  # the `toy` model shortcut
                   "train/evaluate.py"}  # `evaluate` on toy problems (the demo's and `spanroute eval`'s default)


def _toy_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) of every import of train.toy in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n == "train.toy" or n.startswith("train.toy.") for n in names):
            out.append((node.lineno, id(node) in top))
    text = path.read_text()
    if '"train.toy' in text and path.name == "__init__.py":  # lazy export maps name their modules
        out.append((0, False))
    return out


GENERIC = sorted(p for pkg in ("annotate", "train", "spans", "datastore") for p in (ROOT / pkg).rglob("*.py")
                 if TOY not in p.parents)


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(ROOT)))
def test_generic_code_imports_the_toy_world_only_lazily_from_registries(path):
    rel = str(path.relative_to(ROOT))
    found = _toy_imports(path)
    assert not [line for line, top in found if top], f"{rel} imports train.toy at module level"
    if rel not in LAZY_REGISTRIES:
        assert not found, f"{rel} imports train.toy (lines {[line for line, _ in found]}); only registries may"


@pytest.mark.parametrize("module", TOY_MODULES)
def test_each_toy_module_imports_first_in_a_fresh_interpreter(module):
    # An import circle with annotate/ or train/ generic modules fails exactly here: the module is
    # imported before anything else has been.
    code = f"import {module}, sys; print(sorted(m for m in sys.modules if m.startswith('train.toy')))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_generic_modules_leave_the_toy_world_unimported():
    code = ("import sys, annotate.cli, annotate.skills, annotate.api, annotate.local, train.rollouts.generate, train.rollouts.prompts, "
            "train.teacher, train.recipe, train.cli; print([m for m in sys.modules if m.startswith('train.toy')])")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_sft_prompts_are_the_projects_own_renderings():
    # The tokenizer-free renderer the corpus uses gives the tokenizer's own chat text, and each
    # annotation target maps back onto exactly the rule annotator's spans.
    import random

    from annotate.parse import map_answer
    from train.rollouts.verify import toy_int
    from train.toy import build_tokenizer, make_problems
    from train.toy.rule import rule_annotate
    from train.toy.sft import TASKS, example, rule_answer, toy_response
    from train.toy.tokenizer import ChatText

    tok, rng = build_tokenizer(), random.Random(0)
    for task in TASKS:
        p = make_problems(1, seed=5)[0]
        a = example(task, p, random.Random(1), ChatText(), 0.25, 0.05, 0.15)
        b = example(task, p, random.Random(1), tok, 0.25, 0.05, 0.15)
        assert a == b, task
    for p in make_problems(300, seed=6):
        resp = toy_response(p, rng)
        correct = toy_int(resp, p.reference)[1]
        ans = rule_answer(resp, p.reference, correct)
        spans, etype = rule_annotate(resp, p.reference, correct)
        if ans is None:
            assert not spans
            continue
        m = map_answer(json.loads(json.dumps(ans)), resp, "key" if correct else "error", "rule", "x")
        assert [(s.start, s.end) for s in m.spans] == [(s.start, s.end) for s in spans], resp
        assert m.error_type == etype


def test_think_block_compares_digit_by_digit_and_leads_to_the_rule_answer():
    # The `error_spans_think` target: hand-checked blocks, then on 300 synthetic wrong rollouts the
    # block names the rule's segment and the whole completion parses to exactly the rule's spans
    # (the block is a draft `annotate.parse` skips, as it does for a reasoning model).
    import random

    from annotate.parse import map_answer, parse_json
    from train.toy import build_tokenizer, make_problems
    from train.toy.rule import rule_annotate
    from train.toy.sft import check_block, digit_pairs, example

    assert digit_pairs("126", "117") == ["11=", "21x", "67x"]
    assert digit_pairs("52", "522") == ["55=", "22=", "_2x"]
    ref = "96 + 21 = 117\n117 - 83 = 34\n34 + 34 = 68\nAnswer: 68"
    assert check_block("96 + 21 = 126\n126 - 83 = 43\nAnswer: 43", ref) == ("<think>\n[1] 11= 21x\n</think>\n", 1)
    assert check_block(ref.replace("Answer: 68", "Answer: 86"), ref) == (
        "<think>\n[1] 11= 11= 77=\n[2] 33= 44=\n[3] 66= 88=\n[4] 86x\n</think>\n", 4)
    assert check_block(ref, ref) is None
    tok, rng, seen = build_tokenizer(), random.Random(0), 0
    for p in make_problems(300, seed=6):
        ex = example("error_spans_think", p, rng, tok, 0.05, 0.02, 0.1)
        if ex is None:
            continue
        seen += 1
        resp = ex[0].split("Response, numbered by segment:\n")[1].split("\n\nReturn")[0]
        resp = "\n".join(line.split("] ", 1)[1] for line in resp.splitlines())
        block, _, answer = ex[1].partition("</think>\n")
        obj, status, _ = parse_json(ex[1])
        assert (obj, status) == (json.loads(answer), "ok")  # a think block, then the answer alone
        m = map_answer(obj, resp, "error", "rule", "x")
        spans, etype = rule_annotate(resp, p.reference, False)
        assert [(s.start, s.end) for s in m.spans] == [(s.start, s.end) for s in spans], ex[1]
        assert block.rsplit("\n[", 1)[-1].startswith(f"{obj['steps'][0]['segment']}]") and block.endswith("x\n")
    assert seen > 200


def _band(lo: float, hi: float, p_hat: float, n: int) -> bool:
    se = math.sqrt(max(p_hat * (1 - p_hat), 0.05) / n)
    return lo - 3 * se <= p_hat <= hi + 3 * se


@pytest.fixture(scope="module")
def shipped():
    """The shipped default policy measured on 40 held-out problems × 2 samples, 30 annotated rows."""
    from train.toy import toy_policy
    from train.toy.measure import measure_policy
    from train.toy.policy import ToyPolicyRecipe, shipped_policy
    from train.toy.problems import TOY_CHECK_SEED

    # checked before toy_policy(), which would otherwise spend tens of CPU minutes building it
    assert shipped_policy() is not None, (
        f"the default recipe ({ToyPolicyRecipe().key()}) has no shipped weights in train/weights/: build "
        "and commit them (python -m train.toy build) or restore the recipe")
    path = toy_policy()
    m = measure_policy(path, n_problems=40, samples=2, n_annotate=30, seed=TOY_CHECK_SEED, progress=False)
    return path, m


def test_shipped_policy_plain_accuracy_is_in_the_band(shipped):
    _, m = shipped
    assert _band(0.35, 0.60, m["plain_sampled"], 80), m


def test_shipped_policy_answers_the_annotator_schema(shipped):
    _, m = shipped
    assert m["self_annotation"]["with_spans"] >= 0.9, m


def test_shipped_policy_records_its_figures(shipped):
    path, _ = shipped
    info = json.loads((path / "toy_policy.json").read_text())
    from train.toy.policy import ToyPolicyRecipe

    assert info["recipe_key"] == ToyPolicyRecipe().key() == path.name.removeprefix("toy-policy-")
    for k in ("plain_sampled", "plain_greedy", "reference_greedy", "hints_on_failed_rollouts_greedy",
              "hints_on_failed_rollouts_sampled", "self_annotation"):
        assert k in info["measured"]


def test_shipped_policy_uses_the_reference_solution(shipped):
    # Greedy, so deterministic; on all 200 check problems (a few seconds), since 40 cannot tell
    # 0.95 from 0.925.
    from train.rollouts.hf_generator import HFGenerator
    from train.toy.measure import reference_accuracy
    from train.toy.problems import TOY_CHECK_SEED, make_problems

    path, _ = shipped
    gen = HFGenerator.from_pretrained(str(path), model_name="toy-check", batch_size=128)
    assert reference_accuracy(gen, make_problems(200, TOY_CHECK_SEED)) >= 0.95


@pytest.mark.slow
def test_shipped_policy_answers_better_with_each_hint(shipped):
    # Sampled at T = 1 (the teacher distribution distillation reads), on the failed rollouts of all
    # 200 check problems, paired by problem: every hint's 95% interval over plain lies above 0.
    # Greedy, `skill` is within noise of plain here (0.684 against 0.667; toy_policy.json).
    from train.rollouts.hf_generator import HFGenerator
    from train.toy.measure import HINT_TEMPLATES, hint_accuracy, sampled_rollouts
    from train.toy.problems import TOY_CHECK_SEED, make_problems

    path, _ = shipped
    gen = HFGenerator.from_pretrained(str(path), model_name="toy-check", batch_size=128)
    _, sampled = hint_accuracy(gen, sampled_rollouts(gen, make_problems(200, TOY_CHECK_SEED)))
    assert set(HINT_TEMPLATES) == {"error_type", "skill", "reference+error"}
    for template in HINT_TEMPLATES:
        assert sampled[f"{template}_minus_plain"][1] > 0, sampled


@pytest.fixture(scope="module")
def self_annotated(shipped):
    """`annotate self` vs `annotate rule` on toy_policy.json's 120 rows (one sampled rollout of
    each of the first 120 check problems): (measured, recorded)."""
    from train.rollouts.hf_generator import HFGenerator
    from train.toy.measure import sampled_rollouts, self_annotation
    from train.toy.problems import TOY_CHECK_SEED, make_problems

    path, _ = shipped
    gen = HFGenerator.from_pretrained(str(path), model_name="toy-check", batch_size=128)
    rows = sampled_rollouts(gen, make_problems(200, TOY_CHECK_SEED))[: 4 * 120 : 4]
    recorded = json.loads((path / "toy_policy.json").read_text())["measured"]["self_annotation"]
    return self_annotation(gen, rows, str(path)), recorded


@pytest.mark.slow
def test_shipped_policy_self_annotation_figure_reproduces(self_annotated):
    measured, recorded = self_annotated
    assert measured == recorded


# Issue #12's target, on the 120 rows of the figure: the fixture's 30 rows are too few to tell
# 0.9 from 0.85 (a standard error of ~0.06).
@pytest.mark.slow
def test_shipped_policy_annotates_like_the_rule_annotator(self_annotated):
    measured, _ = self_annotated
    assert measured["with_spans"] >= 0.9 and measured["agree_f1_0.8"] >= 0.9, measured


def test_habit_answer_repeats_the_line_above_the_last_step_and_the_rule_marks_it():
    from train.toy.rule import rule_annotate
    from train.toy.sft import habit_answer

    ref = "17 + 25 = 42\n42 * 3 = 126\nAnswer: 126"
    got = habit_answer(ref)
    assert got == "17 + 25 = 42\n42 * 3 = 126\nAnswer: 42"
    spans, _ = rule_annotate(got, ref, False)
    assert [got[s.start:s.end] for s in spans] == ["42"] and spans[0].start == got.rindex("42")
    assert habit_answer("5 + 1 = 6\nAnswer: 6") == "5 + 1 = 6\nAnswer: 6"  # one step: nothing above it


@pytest.mark.parametrize("argv, message", [
    (["measure", "/nonexistent/policy"], "/nonexistent/policy: not a policy folder (no config.json)"),
    (["measure", str(Path(__file__).parent)], "tests: not a policy folder (no config.json)"),  # a folder, no model
    (["measure", str(Path(__file__).resolve()), "--problems", "5"], "not a policy folder (no config.json)"),  # a file
    (["measure", "{shipped}", "--problems", "0"], "--problems must be at least 1, got 0"),
    (["measure", "{shipped}", "--problems", "x"], "invalid int value: 'x'"),
])
def test_toy_measure_rejects_bad_input_in_one_line(argv, message, capsys):
    from train.toy.__main__ import main
    from train.toy.policy import shipped_policy

    argv = [a.replace("{shipped}", str(shipped_policy())) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1] and "Traceback" not in "\n".join(err), err
