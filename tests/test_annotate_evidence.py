"""Evidence per annotator (issue 14 kind 11): the `annotation` column keeps one entry per
(source, annotator); a job replaces only its own; a failed rerun never marks a row failed while
the row still holds that annotator's good spans; Label Studio scores each annotator by its own
evidence; stores of schema v1 (one struct per row) are migrated from their history."""

from __future__ import annotations

import sys
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from annotate.job import merge_evidence
from annotate.labelstudio import task_for_row
from annotate.protocol import Provenance, RowResult
from annotate.testing.scripted_server import ScriptedServer
from datastore import Lineage, Store
from datastore.migrate import migrate_evidence
from datastore.schema import ANNOTATION_STRUCT_V1, ROLLOUT_SCHEMA, evidence_for
from train.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import annotated, api_args, ev, make_store, toy_records  # noqa: E402

API = Provenance("api", "api:m")


def _e(source, annotator, status, err=None, rerun=None, h="h"):
    return {"source": source, "annotator": annotator, "request_hash": h, "raw_response": "raw", "parse_status": status,
            "parse_error": err, "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0, "rerun_error": rerun}


def _res(status, err=None):
    return RowResult("r", [], None, status, err, request_hash="new", raw_response="raw", prompt_tokens=1,
                     completion_tokens=1)


RULE = _e("rule", "rule-toy-v1", "ok")
V1 = {"request_hash": "old", "raw_response": "raw", "parse_status": "ok", "parse_error": None,
      "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0}

# (entries before, this job's result, entries after)
CASES = {
    "first run": ([], _res("ok"), [_e("api", "api:m", "ok", h="new")]),
    "other annotator untouched": ([RULE], _res("failed", "bad"), [_e("api", "api:m", "failed", "bad", h="new"), RULE]),
    "good kept over a failed rerun": ([_e("api", "api:m", "ok")], _res("failed", "invalid JSON"),
                                      [_e("api", "api:m", "ok", rerun="failed: invalid JSON")]),
    "good kept over a truncated rerun": ([_e("api", "api:m", "repaired", "noted"), RULE], _res("truncated", "cut"),
                                         [_e("api", "api:m", "repaired", "noted", rerun="truncated: cut"), RULE]),
    "skipped rerun changes nothing": ([_e("api", "api:m", "ok")], _res("skipped", "not sent"), [_e("api", "api:m", "ok")]),
    "skipped after a failure changes nothing": ([_e("api", "api:m", "failed", "x")], _res("skipped"),
                                                [_e("api", "api:m", "failed", "x")]),
    "failed replaced by failed": ([_e("api", "api:m", "failed", "x")], _res("failed", "y"),
                                  [_e("api", "api:m", "failed", "y", h="new")]),
    "failed replaced by ok": ([_e("api", "api:m", "failed", "x")], _res("ok"), [_e("api", "api:m", "ok", h="new")]),
    "ok replaced by a new ok": ([_e("api", "api:m", "ok", rerun="failed: old")], _res("repaired", "n"),
                                [_e("api", "api:m", "repaired", "n", h="new")]),
    "v1 struct kept as unknown origin": (V1, _res("ok"), [{"source": None, "annotator": None, "rerun_error": None,
                                                           **V1}, _e("api", "api:m", "ok", h="new")]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_evidence_replaces_only_this_annotators_entry(name):
    before, res, after = CASES[name]
    assert merge_evidence(before, API, res) == after


def test_two_annotators_keep_their_own_evidence_and_a_failed_rerun_keeps_good_spans(tmp_path, capsys):
    st = make_store(tmp_path / "s", 24, seed=21)
    assert main(["annotate", "rule", "--store", str(tmp_path / "s")]) == 0
    with ScriptedServer() as srv:
        assert main(api_args(tmp_path / "s", srv.base_url)) == 0
        good = {r["rollout_id"]: r for r in annotated(st)}
        # a rerun that fails on every row: answers cut at 8 tokens (another request, so not cached)
        assert main(api_args(tmp_path / "s", srv.base_url, "--max-tokens", "8")) == 0
    assert '"truncated": 24' in capsys.readouterr().out
    for r in annotated(st):
        rule, api = ev(r, "rule-toy-v1"), ev(r, "api:scripted")
        assert rule["parse_status"] == "ok" and rule["source"] == "rule"
        assert api["parse_status"] == ev(good[r["rollout_id"]], "api:scripted")["parse_status"] == "ok"
        assert api["rerun_error"].startswith("truncated: answer cut at max_tokens=8")
        assert r["spans"] == good[r["rollout_id"]]["spans"]  # both annotators' spans kept
        assert {s["source"] for s in r["spans"]} == {"rule", "api"}


def test_label_studio_scores_each_annotator_by_its_own_evidence():
    rec = toy_records(1, seed=3)[0]
    resp = rec["response"]
    spans = [{"start": 0, "end": 2, "label": "key", "source": s, "annotator": a, "text": resp[:2]}
             for s, a in (("api", "api:a"), ("api", "api:b"), ("rule", "rule-toy-v1"), ("self", "self:c"))]
    row = dict(rec, spans=spans, annotation=[_e("api", "api:a", "repaired"), _e("api", "api:b", "truncated"),
                                             _e("self", "self:c", "ok")])
    scores = {p["model_version"]: p["score"] for p in task_for_row(row, {}, 1)["predictions"]}
    assert scores == {"api:api:a": 0.5, "api:api:b": 0.0, "rule:rule-toy-v1": 1.0, "self:self:c": 1.0}
    assert evidence_for(row["annotation"], "api", "api:zzz") is None


# ---- migration of schema v1 stores -----------------------------------------------------------

V1_SCHEMA = pa.schema([pa.field("annotation", ANNOTATION_STRUCT_V1) if f.name == "annotation" else f
                       for f in ROLLOUT_SCHEMA])


def _v1(i, status):
    return {"request_hash": f"h{i}", "raw_response": "{}", "parse_status": status, "parse_error": None,
            "prompt_tokens": 3, "completion_tokens": 4, "cost_usd": 0.5}


def _v1_store(path) -> tuple[Store, list[str]]:
    """A store as schema v1 wrote it: rows, then a rule job on all rows, then an api job on half."""
    rows = [{k: v for k, v in r.items() if k in V1_SCHEMA.names} for r in toy_records(8, seed=22)]
    lance.write_dataset(pa.Table.from_pylist(rows, schema=V1_SCHEMA), str(Path(path) / "rollouts.lance"))
    st = Store(path)
    ids = [r["rollout_id"] for r in rows]
    for who, source, part, status in (("rule-toy-v1", "rule", ids, "ok"), ("api:m", "api", ids[:4], "failed")):
        st.update(pa.table({"rollout_id": part, "annotation": pa.array([_v1(i, status) for i in range(len(part))],
                                                                      ANNOTATION_STRUCT_V1)}),
                  message=who, lineage=Lineage(stage="annotate", annotator=who, extra={"source": source}))
    return st, ids


def test_a_v1_store_is_migrated_from_its_history_and_old_versions_still_read(tmp_path):
    st, ids = _v1_store(tmp_path / "s")
    assert st.latest_version() == 3
    v = migrate_evidence(st)
    assert v == 5 and st.versions()[-1].lineage["stage"] == "migrate"  # v4: Lance's drop of the v1 column
    cells = dict(zip(ids, st.read(columns=["annotation"]).column("annotation").to_pylist()))
    for k, rid in enumerate(ids):
        rule = evidence_for(cells[rid], "rule", "rule-toy-v1")
        assert rule["parse_status"] == "ok" and rule["request_hash"] == f"h{k}"
        api = evidence_for(cells[rid], "api", "api:m")
        assert (api is not None) == (k < 4) and (api is None or api["parse_status"] == "failed")
        assert len(cells[rid]) == 1 + (k < 4)
    old = st.read(3, columns=["annotation"]).column("annotation").to_pylist()
    assert old[0]["parse_status"] == "failed"  # history is untouched: v3 still holds v1 structs
    assert migrate_evidence(st) is None  # nothing left to do


def test_a_migration_killed_between_its_two_commits_resumes(tmp_path):
    st, ids = _v1_store(tmp_path / "s")
    st.dataset().drop_columns(["annotation"])  # what a crash after the first commit leaves
    assert "annotation" not in st.schema().names
    assert migrate_evidence(st) == 5
    cells = st.read(columns=["annotation"]).column("annotation").to_pylist()
    assert sum(len(c) for c in cells) == 8 + 4


def test_annotating_a_v1_store_migrates_it_first(tmp_path):
    st, ids = _v1_store(tmp_path / "s")
    assert main(["annotate", "rule", "--store", str(tmp_path / "s")]) == 0
    assert [i.lineage.get("stage") for i in st.versions()[-2:]] == ["migrate", "annotate"]
    for r in annotated(st):
        assert ev(r, "rule-toy-v1")["request_hash"] is None  # replaced by the new rule job's own
        assert ev(r, "rule-toy-v1")["parse_status"] in ("ok", "skipped")
