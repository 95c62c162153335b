"""`spanroute demo`: the statistics (hand-computed), arms as data, the quick run end to end, and the
online rounds annotating through the same job as `spanroute annotate rule|self`."""

from __future__ import annotations

import json
import math

import pytest

from tests.train_fixtures import one_thread
from train.cli import main
from train.stats import mean_ci, paired_diff_ci, sample_std, t_quantile


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


# --- statistics: every figure below is worked by hand or read from a printed t table -------------

@pytest.mark.parametrize("p, df, want", [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 30, 2.0423),
    (0.95, 3, 2.3534), (0.025, 2, -4.3027), (0.5, 5, 0.0),
])
def test_t_quantile_matches_the_printed_table(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=1e-4)


# values, mean, half-width = t_{0.975,n-1} * s / sqrt(n)
@pytest.mark.parametrize("xs, m, half", [
    ([0.1, 0.2, 0.3], 0.2, 4.302653 * 0.1 / math.sqrt(3)),            # s = 0.1
    ([1.0, 3.0], 2.0, 12.706205 * math.sqrt(2) / math.sqrt(2)),      # s = sqrt(2)
    ([0.5, 0.5, 0.5, 0.5], 0.5, 0.0),                                 # no spread, no width
    ([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 5.0, 2.364624 * sample_std([2, 4, 4, 4, 5, 5, 7, 9]) / math.sqrt(8)),
])
def test_mean_ci_is_student_t_over_seeds(xs, m, half):
    got, lo, hi = mean_ci(xs)
    assert got == pytest.approx(m) and lo == pytest.approx(m - half, abs=1e-6) and hi == pytest.approx(m + half, abs=1e-6)


def test_sample_std_uses_n_minus_one():
    assert sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))


def test_paired_difference_is_the_interval_of_per_seed_differences():
    # b - a per seed = 0.1, 0.2, 0.3: the same interval as test_mean_ci's first case
    d, lo, hi = paired_diff_ci([0.5, 0.6, 0.8], [0.4, 0.4, 0.5])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (d, lo, hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-6)
    # pairing cancels what seeds share: a constant gap has zero width however much seeds differ
    assert paired_diff_ci([0.9, 0.2, 0.5], [0.8, 0.1, 0.4])[1:] == pytest.approx((0.1, 0.1))


@pytest.mark.parametrize("call, message", [
    (lambda: paired_diff_ci([0.1, 0.2], [0.1]), "equal lengths"),
    (lambda: mean_ci([]), "no values"),
    (lambda: t_quantile(1.0, 3), "p must be in"),
    (lambda: t_quantile(0.9, 0), "degrees of freedom"),
])
def test_statistics_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_one_seed_gives_no_interval():
    m, lo, hi = mean_ci([0.3])
    assert m == 0.3 and math.isnan(lo) and math.isnan(hi)


def test_summary_shape_diffs_and_winner():
    from train.demo_report import markdown, summarize

    def rows(accs):
        return [{"seed": s, "accuracy": a, "greedy_accuracy": a, "response_length": 10.0, "entropy": 0.5,
                 "steps": 4} for s, a in enumerate(accs)]

    s = summarize({"baseline": rows([0.3, 0.3, 0.3]), "grpo": rows([0.4, 0.4, 0.5]), "trace": rows([0.5, 0.6, 0.8])})
    assert s["winner"] == "trace"
    assert s["methods"]["grpo"]["accuracy"] == pytest.approx(0.4333, abs=1e-4)
    c = s["comparisons"]["trace-grpo"]
    assert c["diff"] == pytest.approx(0.2) and c["ci95"] == pytest.approx([-0.0484, 0.4484], abs=1e-4)
    assert set(s["comparisons"]) == {"trace-grpo"} and len(s["methods"]["trace"]["seeds"]) == 3
    md = markdown(s)
    assert "| trace | 0.633 [" in md and "+0.200 [-0.048, +0.448]" in md


# --- arms are data --------------------------------------------------------------------------------

@pytest.mark.parametrize("given, want", [
    ("all", ("grpo", "trace-fkl", "trace-rkl", "trace", "trace-random", "opd", "trace-self", "skill-sd")),
    ("trace", ("grpo", "trace")),
    ("opd, grpo", ("grpo", "opd")),
])
def test_resolve_arms(given, want):
    from train.demo import resolve_arms

    assert resolve_arms(given) == want


def test_unknown_arm_and_missing_method_are_one_line_errors(tmp_path, monkeypatch):
    from train import demo

    with pytest.raises(ValueError, match="unknown arm.*nope.*known: all, grpo"):
        demo.resolve_arms("grpo,nope")
    monkeypatch.setitem(demo.ARMS, "future", {"method": {"name": "not-built"}})
    dc = demo.DemoConfig(arms=("grpo", "future"))
    bad = demo.check_arms(dc, str(tmp_path), tmp_path)
    assert list(bad) == ["future"] and "arm 'future' cannot run on this tree: method.name='not-built' is not one of grpo, trace" in bad["future"]


# --- end to end -----------------------------------------------------------------------------------

def _cap_overruns(store) -> list[str]:
    """Rows whose spans TRACE's 25% cap would cut (the same check as the annotate job)."""
    from spans import validate_report
    from spans.model import Span

    bad = []
    for r in store.read(columns=["rollout_id", "response", "spans"]).to_pylist():
        spans = [Span.from_dict(s) for s in r["spans"] or []]
        if spans and validate_report(r["response"], spans, max_fraction=0.25)[1]:
            bad.append(r["rollout_id"])
    return bad


def test_demo_quick_writes_the_summary(tmp_path, capsys):
    from datastore import Store

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--arms", "grpo,trace"]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "trace" in printed and "Student t" in printed and "plot:" in printed
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"baseline", "methods", "comparisons", "seconds"}
    assert {"accuracy", "greedy_accuracy"} <= set(s["baseline"])
    assert set(s["methods"]) == {"grpo", "trace"} and set(s["comparisons"]) == {"trace-grpo"}
    assert len(s["comparisons"]["trace-grpo"]["ci95"]) == 2
    for m in ("grpo", "trace"):
        x = s["methods"][m]
        assert {"accuracy", "ci95", "seeds"} <= set(x) and [r["seed"] for r in x["seeds"]] == [0, 1]
        for r in x["seeds"]:
            assert {"seed", "accuracy", "greedy_accuracy", "steps"} <= set(r) and r["steps"] == 2
            assert (out / m / f"seed-{r['seed']}" / "final" / "model.safetensors").exists()
    assert (out / "curves.png").exists() and "| trace |" in (out / "results.md").read_text()
    # each round is a datastore version per stage, written by the shared annotate/skills jobs
    st = Store(out / "store")
    stages = [v.lineage.get("stage") for v in st.versions()]
    assert stages.count("generate") == 4 and stages.count("annotate") == 4 and stages.count("skills") == 4
    assert st.verify().ok and _cap_overruns(st) == []
    assert main(["data", "verify", "--store", str(out / "store")]) == 0
    # a rerun into the same folder refuses instead of mixing runs
    assert main(["demo", "--quick", "--out", str(out)]) == 1


def _online_self(tmp_path, policy: str) -> tuple[object, list[dict]]:
    """One `train --online self` round on `policy`; (store, rows of that round)."""
    from datastore import Store

    out = tmp_path / "run"
    assert main(["train", "method.name=grpo", f"model.path={policy}", f"run.out={out}", "run.device=cpu",
                 "data.groups_per_step=2", "data.micro_batch_size=8", "--online", "self", "--rounds", "1",
                 "--prompts-per-round", "4", "--num-generations", "2", "--steps-per-round", "1", "--quiet"]) == 0
    st = Store(out / "store")
    return st, st.read().to_pylist()


def test_online_self_annotates_through_the_shared_job(tmp_path):
    from tests.train_fixtures import make_policy

    st, rows = _online_self(tmp_path, str(make_policy(tmp_path / "policy")))
    ann = [v for v in st.versions() if v.lineage.get("stage") == "annotate"]
    assert len(ann) == 1 and ann[0].lineage["annotator"].startswith("self:")
    assert ann[0].lineage["extra"]["source"] == "self" and ann[0].lineage["extra"]["rows"] == 8
    # evidence of the shared job on every row: the request hash and the policy's raw answer
    # (`annotation` holds one evidence entry per (source, annotator))
    selfs = [[e for e in r["annotation"] if e["source"] == "self"] for r in rows]
    assert all(len(es) == 1 and es[0]["request_hash"] and es[0]["parse_status"] for es in selfs)
    assert _cap_overruns(st) == []


def test_online_self_on_the_toy_policy_writes_self_spans(tmp_path):
    from train.toy import toy_policy

    st, rows = _online_self(tmp_path, str(toy_policy()))
    spans = [s for r in rows for s in r["spans"] or []]
    assert spans and {s["source"] for s in spans} == {"self"}
    assert st.verify().ok and _cap_overruns(st) == []


@pytest.mark.parametrize("args, message", [
    (["--online", "oracle"], "--online annotator must be one of rule, self, api, got 'oracle'"),
    (["--online", "api"], "--online api needs --base-url and --model"),
    (["--online", "api", "--base-url", "http://127.0.0.1:9/v1"], "--online api needs --base-url and --model"),
])
def test_online_refuses_bad_annotator_options_before_any_work(tmp_path, capsys, args, message):
    assert main(["train", "method.name=grpo", f"run.out={tmp_path / 'run'}", *args]) == 1
    assert message in " ".join(capsys.readouterr().err.split())  # rich may wrap the line
    assert not (tmp_path / "run" / "store").exists()
