"""The api annotation engine over real HTTP against the scripted OpenAI-compatible server.

Faults are injected on the server (429 + Retry-After, 500, answers slower than the client's timeout,
malformed JSON, out-of-range segment numbers, quotes not in the text); the client is the real
`openai.AsyncOpenAI` on aiohttp. No timing thresholds: only outcomes and the server's request log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from annotate.api import ApiAnnotator
from annotate.engine import EngineConfig, parse_duration_s, run_calls
from annotate.pricing import Price
from train.toy.rule import RuleAnnotator
from annotate.testing.scripted_server import FaultPlan, ScriptedServer, ToyOracle

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import toy_records  # noqa: E402

CHILD = Path(__file__).parent / "annotate_child.py"
FAULTS = FaultPlan(p429=0.1, p500=0.1, pslow=0.03, slow_s=1.0, retry_after_s=0.05)
CONTENT = ToyOracle(p_malformed=0.04, p_out_of_range=0.04, p_bad_quote=0.04)


def _cfg(srv, tmp_path, **kw) -> EngineConfig:
    base = dict(base_url=srv.base_url, cache_path=tmp_path / "cache.sqlite", concurrency=16, timeout_s=0.4,
                backoff_base_s=0.02, price=Price(1.0, 2.0), progress=False, max_attempts=10)
    base.update(kw)
    return EngineConfig(**base)


def test_200_rollouts_complete_through_faults_and_every_row_has_a_reason(tmp_path):
    records = toy_records(200, seed=1)
    with ScriptedServer(responder=CONTENT, faults=FAULTS) as srv:
        ann = ApiAnnotator(_cfg(srv, tmp_path), "scripted")
        results = ann.annotate(records)
        kinds = Counter(e.kind for e in srv.log)
        assert srv.answered_twice() == []
    s = ann.summary
    # the faults really happened, and were survived
    assert kinds["429"] > 0 and kinds["500"] > 0 and kinds["slow"] > 0 and s.retries > 0
    assert s.failed == 0 and s.skipped == 0 and s.done == s.requests
    assert len(results) == 200
    status = Counter(r.status for r in results)
    assert set(status) <= {"ok", "repaired", "failed"} and status["ok"] > 150
    assert status["repaired"] > 0 and status["failed"] > 0  # bad answers were repaired or recorded
    rule = {r.rollout_id: r for r in RuleAnnotator().annotate(records)}
    for rec, r in zip(records, results):
        assert r.request_hash and r.raw_response  # evidence kept for every answered row
        if r.status == "failed":
            assert r.error and r.spans == []
        else:
            assert r.spans and all(rec["response"][x.start:x.end] == x.text for x in r.spans)
            assert all(x.source == "api" and x.annotator == "api:scripted" for x in r.spans)
        if r.status == "ok":  # a clean answer of the oracle equals the exact rule annotation
            want = rule[rec["rollout_id"]]
            assert [(x.start, x.end, x.label) for x in r.spans] == [(x.start, x.end, x.label) for x in want.spans]
            assert r.error_type == want.error_type
    assert s.prompt_tokens > 0 and s.cost_usd == pytest.approx(Price(1, 2).cost(s.prompt_tokens, s.completion_tokens))


def test_rerun_is_served_from_the_cache_and_pays_nothing(tmp_path):
    records = toy_records(40, seed=2)
    with ScriptedServer(responder=CONTENT) as srv:
        first = ApiAnnotator(_cfg(srv, tmp_path), "scripted")
        r1 = first.annotate(records)
        n_log = len(srv.log)
        again = ApiAnnotator(_cfg(srv, tmp_path), "scripted")
        r2 = again.annotate(records)
        assert len(srv.log) == n_log  # not one request reached the server
    assert again.summary.cached == again.summary.requests and again.summary.cost_usd == 0
    assert [asdict(a) for a in r1] == [asdict(b) for b in r2]


def test_changing_the_request_misses_the_cache(tmp_path):
    records = toy_records(8, seed=3)
    with ScriptedServer() as srv:
        ApiAnnotator(_cfg(srv, tmp_path), "scripted").annotate(records)
        n = len(srv.log)
        other = ApiAnnotator(_cfg(srv, tmp_path), "scripted-2")  # another model = another request
        other.annotate(records)
        assert len(srv.log) > n and other.summary.cached == 0


def _run_child(args: dict, tmp_path: Path, kill_after_answers: int | None, srv: ScriptedServer):
    path = tmp_path / f"args{time.monotonic_ns()}.json"
    path.write_text(json.dumps(args))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after_answers is None:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return json.loads(Path(args["out"]).read_text())
    start = sum(1 for e in srv.log if e.kind == "answered")
    deadline = time.time() + 60
    while sum(1 for e in srv.log if e.kind == "answered") < start + kill_after_answers:
        assert proc.poll() is None, "child finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return None


def test_killed_job_resumes_to_the_uninterrupted_result_without_answering_twice(tmp_path):
    records = toy_records(200, seed=4)
    rec_path = tmp_path / "records.json"
    rec_path.write_text(json.dumps(records))
    faults = FaultPlan(p429=0.05, p500=0.05, retry_after_s=0.02)
    # Two servers: the uninterrupted job's answers must not be replayed to the killed one.
    with ScriptedServer(responder=CONTENT, faults=faults, latency_s=0.01) as srv:
        clean = _run_child({"records": str(rec_path), "base_url": srv.base_url, "concurrency": 8,
                            "cache": str(tmp_path / "clean.sqlite"), "out": str(tmp_path / "clean.json")},
                           tmp_path, None, srv)
    with ScriptedServer(responder=CONTENT, faults=faults, latency_s=0.01) as srv:
        args = {"records": str(rec_path), "base_url": srv.base_url, "concurrency": 8,
                "cache": str(tmp_path / "killed.sqlite"), "out": str(tmp_path / "killed.json")}
        for n in (5, 40, 30):  # SIGKILL three times at different points, then run to the end
            assert _run_child(args, tmp_path, n, srv) is None
        resumed = _run_child(args, tmp_path, None, srv)
        assert srv.answered_twice() == []  # no request was computed (billed) twice
        answered = sum(1 for e in srv.log if e.kind == "answered")
    assert resumed["results"] == clean["results"]
    assert answered == clean["summary"]["requests"]  # each distinct request computed exactly once
    assert resumed["summary"]["cached"] > 0  # the resume reused what the killed runs stored


def test_max_cost_stops_cleanly_and_a_rerun_resumes(tmp_path):
    records = toy_records(120, seed=5)
    with ScriptedServer(responder=CONTENT) as srv:
        capped = ApiAnnotator(_cfg(srv, tmp_path, max_cost_usd=0.004, concurrency=4), "scripted")
        r1 = capped.annotate(records)
        s1 = capped.summary
        assert s1.stopped == "max-cost" and s1.skipped > 0 and s1.failed == 0
        # spend + expected cost in flight is checked before each send: any overshoot is only the
        # difference between expected and actual cost of the (at most 4) requests in flight
        assert s1.cost_usd <= 0.004 + 4 * max(r.cost_usd for r in r1)
        skipped = [r for r in r1 if r.status == "skipped"]
        assert skipped and all("max-cost" in r.error for r in skipped)
        n_answered = sum(1 for e in srv.log if e.kind == "answered")
        full = ApiAnnotator(_cfg(srv, tmp_path), "scripted")
        r2 = full.annotate(records)
        assert full.summary.cached == s1.done and full.summary.skipped == 0
        assert full.summary.resent_after_crash == 0  # a clean stop leaves nothing marked in flight
        assert sum(1 for e in srv.log if e.kind == "answered") == n_answered + full.summary.sent
        assert srv.answered_twice() == []
    assert all(r.status != "skipped" for r in r2)


def test_planted_api_key_never_reaches_cache_results_or_errors(tmp_path, monkeypatch, capfd):
    key = "sk-planted-KEY-do-not-leak-4242"
    monkeypatch.setenv("SPANROUTE_TEST_KEY", key)
    records = toy_records(30, seed=6)

    def echo_headers(body: dict) -> str:  # a hostile server that echoes what it was sent
        return "not json " + json.dumps(body)[:200] + " " + key

    with ScriptedServer(responder=echo_headers, faults=FaultPlan(p500=0.3)) as srv:
        ann = ApiAnnotator(_cfg(srv, tmp_path, api_key_env="SPANROUTE_TEST_KEY"), "scripted")
        results = ann.annotate(records)
    # failures carry redacted messages; the raw answers the server echoed are redacted too
    blob = json.dumps([asdict(r) for r in results]) + json.dumps(ann.summary.as_dict())
    assert key not in blob and "***" in blob
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    out, err = capfd.readouterr()
    assert key not in out and key not in err


def test_retry_after_and_ratelimit_durations_parse():
    assert parse_duration_s("2") == 2.0
    assert parse_duration_s("20ms") == pytest.approx(0.02)
    assert parse_duration_s("6m0s") == 360.0
    assert parse_duration_s("1.5s") == 1.5
    assert parse_duration_s(None) is None and parse_duration_s("soon") is None


def test_client_errors_fail_the_row_at_once_with_the_reason(tmp_path):
    with ScriptedServer() as srv:
        bad = {"model": "m", "messages": "not a list"}
        good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        recs, s = run_calls([bad, good], _cfg(srv, tmp_path))
        assert len(srv.log) == 1  # the bad request was not retried (400s are never logged as answers)
    assert s.done == 1 and s.failed == 1 and s.retries == 0
    failed = [r for r in recs.values() if r.state == "failed"]
    assert failed[0].attempts == 1 and "HTTP 400" in failed[0].error


def test_429s_shrink_concurrency_and_ratelimit_headers_pause_sending(tmp_path):
    records = toy_records(60, seed=7)
    faults = FaultPlan(p429=0.3, retry_after_s=0.01, ratelimit_every=5)
    with ScriptedServer(responder=CONTENT, faults=faults) as srv:
        ann = ApiAnnotator(_cfg(srv, tmp_path, concurrency=16), "scripted")
        ann.annotate(records)
        assert srv.answered_twice() == []
    s = ann.summary
    assert s.failed == 0 and s.done == s.requests
    assert s.rate_limited > 0 and s.min_concurrency < 16  # AIMD cut on 429
    assert s.ratelimit_pauses > 0  # x-ratelimit-remaining-requests: 0 was honoured
