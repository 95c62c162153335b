"""Annotation jobs end to end: the CLI over a real on-disk datastore and a real HTTP server.

Each job reads a version and writes exactly one new version with lineage; a job SIGKILLed mid-way
and rerun ends in the same store as an uninterrupted one; a planted API key appears nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from datastore import Store
from datastore.schema import ROLLOUT_SCHEMA

from annotate.testing.scripted_server import FaultPlan, ScriptedServer, ToyOracle
from train.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import annotated, api_args, ev, make_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-planted-store-key-77777777"
CONTENT = ToyOracle(p_malformed=0.04, p_out_of_range=0.04, p_bad_quote=0.04)


def test_rule_writes_one_version_with_lineage_and_replaces_only_its_own_spans(tmp_path, capsys):
    st = make_store(tmp_path / "s", 24)
    # someone else's span on row 0 must survive the rule annotator
    row = st.read(columns=["rollout_id", "response"]).to_pylist()[0]
    human = {"start": 0, "end": 2, "label": "key", "source": "human", "annotator": "ann-1",
             "text": row["response"][:2]}
    st.update(pa.table({"rollout_id": [row["rollout_id"]], "spans": pa.array([[human]], ROLLOUT_SCHEMA.field("spans").type)}),
              message="human")
    assert main(["annotate", "rule", "--store", str(tmp_path / "s")]) == 0
    assert main(["annotate", "rule", "--store", str(tmp_path / "s")]) == 0  # idempotent per annotator
    info = st.versions()[-1]
    assert info.lineage["stage"] == "annotate" and info.lineage["annotator"] == "rule-toy-v1"
    rows = {r["rollout_id"]: r for r in annotated(st)}
    spans0 = rows[row["rollout_id"]]["spans"]
    assert human in spans0 and sum(1 for s in spans0 if s["source"] == "rule") >= 1
    for r in rows.values():
        assert len([s for s in r["spans"] if s["source"] == "rule"]) in (1, 2)
        assert ev(r)["parse_status"] == "ok"
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(out)["ok"] == 24


def test_api_job_writes_spans_evidence_and_lineage_and_never_leaks_the_key(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    st = make_store(tmp_path / "s", 60, seed=1)
    with ScriptedServer(responder=CONTENT, faults=FaultPlan(p429=0.1, p500=0.1, retry_after_s=0.02)) as srv:
        assert main(api_args(tmp_path / "s", srv.base_url)) == 0
        assert srv.answered_twice() == []
    info = st.versions()[-1]
    lin = info.lineage
    assert lin["stage"] == "annotate" and lin["annotator"] == "api:scripted" and lin["model"] == "scripted"
    assert len(lin["prompt_hash"]) == 16 and set(lin["extra"]["prompt_hashes"]) == {"key_spans", "error_spans"}
    assert lin["extra"]["base_url"].startswith("http://127.0.0.1:")
    for r in annotated(st):
        e = ev(r)
        assert e["parse_status"] in ("ok", "repaired", "failed") and e["request_hash"]
        assert (e["source"], e["annotator"]) == ("api", "api:scripted")
        if e["parse_status"] == "failed":
            assert e["parse_error"] and e["raw_response"]
        else:
            assert any(s["source"] == "api" for s in r["spans"])
    out, err = capfd.readouterr()
    assert KEY not in out + err
    for f in (tmp_path / "s").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def _child(args: list[str], key: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "train.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli_job_killed_twice_then_rerun_equals_the_uninterrupted_store(tmp_path):
    make_store(tmp_path / "a", 120, seed=2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with ScriptedServer(responder=CONTENT, latency_s=0.01) as srv:
        p = _child(api_args(tmp_path / "a", srv.base_url), KEY)
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    with ScriptedServer(responder=CONTENT, latency_s=0.01) as srv:
        for n in (10, 25):
            p = _child(api_args(tmp_path / "b", srv.base_url), KEY)
            start = sum(1 for e in srv.log if e.kind == "answered")
            deadline = time.time() + 60
            while sum(1 for e in srv.log if e.kind == "answered") < start + n:
                assert p.poll() is None and time.time() < deadline
                time.sleep(0.002)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
        p = _child(api_args(tmp_path / "b", srv.base_url), KEY)
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
        assert srv.answered_twice() == []
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.latest_version() == b.latest_version() == 2  # killed runs wrote nothing
    assert annotated(a) == annotated(b)


def test_max_cost_stops_cleanly_then_a_bigger_budget_resumes(tmp_path, capsys):
    st = make_store(tmp_path / "s", 80, seed=3)
    with ScriptedServer(responder=CONTENT) as srv:
        assert main(api_args(tmp_path / "s", srv.base_url, "--max-cost", "0.003")) == 0
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert first["stopped"] == "max-cost" and first["skipped"] > 0
        n1 = sum(1 for e in srv.log if e.kind == "answered")
        assert main(api_args(tmp_path / "s", srv.base_url, "--max-cost", "10")) == 0
        second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert second["stopped"] is None and "skipped" not in second and second["cached"] == n1
        assert srv.answered_twice() == []
    assert all(ev(r)["parse_status"] != "skipped" for r in annotated(st))


def test_skills_extract_rule_and_api_fill_the_skill_column_and_the_bank(tmp_path):
    st = make_store(tmp_path / "s", 16, seed=4)
    bank = tmp_path / "bank.json"
    assert main(["skills", "extract", "--store", str(tmp_path / "s"), "--bank", str(bank)]) == 0
    rule_skills = st.read(columns=["prompt_id", "skill"]).to_pylist()
    assert all(set(json.loads(r["skill"])) == {"success_analysis", "mistake_analysis", "golden_workflow"}
               for r in rule_skills)
    with ScriptedServer() as srv:
        assert main(["skills", "extract", "--store", str(tmp_path / "s"), "--engine", "api", "--model", "scripted",
                     "--base-url", srv.base_url, "--no-progress", "--bank", str(bank)]) == 0
        assert len(srv.log) == 4  # one request per prompt group
    assert st.versions()[-1].lineage["stage"] == "skills"
    from annotate.skills import SkillBank

    b = SkillBank.load(bank)
    assert all(len(arms) == 2 for arms in b.arms.values()) and len(b.arms) == 4


def test_batch_api_export_then_import_annotates_from_the_cache_without_requests(tmp_path):
    st = make_store(tmp_path / "s", 24, seed=5)
    out = tmp_path / "batch_in.jsonl"
    with ScriptedServer() as srv:
        assert main(api_args(tmp_path / "s", srv.base_url, "--batch-export", str(out))) == 0
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert lines and all(x["url"] == "/v1/chat/completions" and len(x["custom_id"]) == 64 for x in lines)
        # what the Batch API returns for that file (format of its output JSONL), answered by the oracle
        oracle = ToyOracle()
        results = tmp_path / "batch_out.jsonl"
        results.write_text("".join(json.dumps({
            "id": f"batch_req_{i}", "custom_id": x["custom_id"], "error": None,
            "response": {"status_code": 200, "request_id": "r", "body": {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": oracle(x["body"])}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20}}}}) + "\n" for i, x in enumerate(lines)))
        assert main(api_args(tmp_path / "s", srv.base_url, "--batch-import", str(results))) == 0
        assert srv.log == []  # every answer came from the imported batch
    rows = annotated(st)
    assert st.latest_version() == 2 and all(ev(r)["parse_status"] in ("ok", "repaired") for r in rows)
    assert ev(rows[0])["cost_usd"] == pytest.approx((100 * 1 + 20 * 2) / 1e6 * 0.5)


def test_self_in_process_uses_the_policy_generator_and_the_same_cache(tmp_path, capsys):
    from train.toy import build_tokenizer, tiny_model

    ckpt = tmp_path / "policy"
    tok = build_tokenizer()
    tiny_model(tok).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    st = make_store(tmp_path / "s", 4, seed=6)
    args = ["annotate", "self", "--store", str(tmp_path / "s"), "--model", str(ckpt), "--max-tokens", "8",
            "--no-progress"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["sent"] > 0
    lin = st.versions()[-1].lineage
    assert lin["extra"]["source"] == "self" and lin["extra"]["checkpoint"] == str(ckpt)
    assert lin["annotator"] == "self:policy"
    # prompt tokens are counted as the policy's tokenizer encodes the rendered prompt (an annotator
    # prompt is ~250 toy tokens), per row and, once per distinct request, in the summary
    per_request = {ev(r)["request_hash"]: ev(r)["prompt_tokens"] for r in annotated(st)}
    assert all(100 < n < 400 for n in per_request.values())
    assert first["prompt_tokens"] == sum(per_request.values()) and len(per_request) == first["sent"]
    for r in annotated(st):  # a random tiny model writes no JSON: every row says so, raw answer kept
        assert ev(r)["raw_response"] and ev(r)["parse_error"]
        # cut at --max-tokens 8 it says so; an answer that stopped on its own is unusable JSON
        assert (ev(r)["parse_status"], "max_tokens=8" in ev(r)["parse_error"]) in (("truncated", True),
                                                                                   ("failed", False))
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["sent"] == 0 and again["cached"] == first["sent"]
