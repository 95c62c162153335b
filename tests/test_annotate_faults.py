"""Faults no retry can fix stop the job at once (issue 14 kind 2).

Against the real scripted OpenAI-compatible server on 127.0.0.1 with the fault injected on the
server, driven by the engine's official `openai.AsyncOpenAI` client: the job stops dispatching,
rows not answered stay unsent (`skipped`, a rerun sends them), the cause and the fix are one line,
and the CLI exits non-zero. No timing thresholds: request counts from the server's log.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from annotate.api import ApiAnnotator
from annotate.engine import EngineConfig, run_calls
from annotate.faults import is_local, require_key
from annotate.pricing import Price
from annotate.testing.scripted_server import FaultPlan, ScriptedServer
from train.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from annotate_fixtures import annotated, api_args, ev, make_store, toy_records  # noqa: E402

KEY_ENV = "SPANROUTE_FAULT_TEST_KEY"
CONC = 4


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connections are refused
    return port


# fault kind -> (server kwargs, model asked for, the words the cause must hold, the fix it must name)
FAULTS = {
    "quota": (dict(faults=FaultPlan(fatal="insufficient_quota")), "scripted",
              "HTTP 429 insufficient_quota", f"${KEY_ENV}"),
    "bad key": (dict(api_key="sk-the-right-key-123"), "scripted", "HTTP 401", f"valid key in ${KEY_ENV}"),
    "forbidden": (dict(faults=FaultPlan(fatal="permission_denied")), "scripted", "HTTP 403", f"${KEY_ENV}"),
    "unknown model (vLLM)": (dict(models=("served-policy",)), "scripted", "model 'scripted' not found",
                             "check --model"),
    "unknown model (OpenAI)": (dict(faults=FaultPlan(fatal="model_not_found")), "gpt-nope",
                               "model 'gpt-nope' not found", "/models lists"),
    "schema refused": (dict(faults=FaultPlan(fatal="bad_schema")), "scripted", "HTTP 400",
                       "--response-format json_object"),
}


def _cfg(url, tmp_path, **kw) -> EngineConfig:
    base = dict(base_url=url, cache_path=tmp_path / "cache.sqlite", concurrency=CONC, timeout_s=5.0,
                backoff_base_s=0.01, price=Price(1.0, 2.0), progress=False, api_key_env=KEY_ENV)
    return EngineConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_a_fatal_fault_stops_the_job_and_leaves_unsent_rows_unsent(kind, tmp_path, monkeypatch):
    server_kw, model, cause, fix = FAULTS[kind]
    monkeypatch.setenv(KEY_ENV, "sk-a-wrong-key-456")
    records = toy_records(40, seed=11)
    with ScriptedServer(**server_kw) as srv:
        ann = ApiAnnotator(_cfg(srv.base_url, tmp_path), model)
        results = ann.annotate(records)
        refused_requests = len(srv.log)
    s = ann.summary
    assert s.stopped == "fatal" and cause in s.fatal and fix in s.fatal
    # one request per worker at most reached the server (today: 8 attempts per row, every row)
    assert 1 <= refused_requests <= CONC and s.retries == 0 and s.failed == 0 and s.done == 0
    assert Counter(r.status for r in results) == {"skipped": 40}
    assert all(cause in r.error for r in results if r.request_hash)
    assert "sk-a-wrong-key-456" not in json.dumps(s.as_dict())


def test_quota_running_out_midway_keeps_the_answers_and_a_rerun_sends_only_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-x-12345678")
    records = toy_records(40, seed=12)
    with ScriptedServer(faults=FaultPlan(fatal="insufficient_quota", fatal_after=10)) as srv:
        first = ApiAnnotator(_cfg(srv.base_url, tmp_path), "scripted")
        r1 = first.annotate(records)
    assert first.summary.done == 10 and first.summary.stopped == "fatal"
    assert set(Counter(r.status for r in r1)) == {"ok", "skipped"}
    assert len({r.request_hash for r in r1 if r.status == "ok"}) == 10  # distinct requests answered
    with ScriptedServer() as srv:  # credit added: the rerun sends exactly what was not answered
        again = ApiAnnotator(_cfg(srv.base_url, tmp_path), "scripted")
        r2 = again.annotate(records)
        assert sum(e.kind == "answered" for e in srv.log) == again.summary.requests - 10
    assert again.summary.cached == 10 and all(r.status == "ok" for r in r2)


def test_connection_refused_is_recorded_as_such_and_stops_the_job(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    ann = ApiAnnotator(_cfg(url, tmp_path, max_attempts=8), "scripted")
    results = ann.annotate(toy_records(12, seed=13))
    s = ann.summary
    assert s.stopped == "fatal" and "connection refused" in s.fatal and "timed out" not in s.fatal
    assert "is the server" in s.fatal and s.done == 0 and s.failed == 0
    assert all(r.status == "skipped" for r in results)


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:8000/v1", True), ("http://localhost:8000/v1", True), ("http://[::1]:8000/v1", True),
    ("http://10.0.0.5:8000/v1", True), ("http://192.168.1.20/v1", True), ("http://vllm:8000/v1", True),
    ("http://gpu-box.internal:8000/v1", True), ("https://api.openai.com/v1", False),
    ("https://openrouter.ai/api/v1", False), ("http://8.8.8.8/v1", False),
])
def test_which_endpoints_need_a_key(url, local, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert is_local(url) is local
    if local:
        assert require_key(url, KEY_ENV) == "none"
    else:
        with pytest.raises(ValueError, match=f"no API key: \\${KEY_ENV} is not set"):
            require_key(url, KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "sk-present-0000")
    assert require_key(url, KEY_ENV) == "sk-present-0000"


def test_a_missing_key_is_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = _cfg("https://api.example.com/v1", tmp_path)
    with pytest.raises(ValueError, match=KEY_ENV):
        run_calls([{"model": "m", "messages": []}], cfg)
    assert not cfg.cache_path.exists()  # not even journaled
    st = make_store(tmp_path / "s", 8)
    args = ["annotate", "api", "--store", str(tmp_path / "s"), "--base-url", "https://api.example.com/v1",
            "--model", "gpt-4o-mini", "--api-key-env", KEY_ENV, "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"export {KEY_ENV}=" in err and st.latest_version() == 1


@pytest.mark.parametrize("after, version, written", [(0, 1, 0), (10, 2, 10)])
def test_cli_exits_non_zero_with_one_line_and_writes_only_what_was_answered(tmp_path, monkeypatch, capsys,
                                                                             after, version, written):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test-00000")
    st = make_store(tmp_path / "s", 40, seed=14)
    with ScriptedServer(faults=FaultPlan(fatal="insufficient_quota", fatal_after=after)) as srv:
        assert main(api_args(tmp_path / "s", srv.base_url, "--concurrency", "1")) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "insufficient_quota" in line and "$OPENAI_API_KEY" in line
    assert st.latest_version() == version
    if written:
        rows = annotated(st)
        ok = [r for r in rows if ev(r)["parse_status"] == "ok"]
        assert len({ev(r)["request_hash"] for r in ok}) == written  # distinct requests
        assert f"wrote version {version} with the {len(ok)} rows answered" in line
        assert all(ev(r)["parse_status"] == "skipped" for r in rows if r not in ok)


@pytest.mark.parametrize("served, checkpoint, want", [
    (("policy-a",), "/ckpt/step-40", "policy-a"),  # the only model
    (("other", "step-40"), "/ckpt/step-40/", "step-40"),  # the one named like the checkpoint
    (("a", "b"), "/ckpt/step-40", None),  # ambiguous: refused
])
def test_annotate_self_without_model_asks_the_server(tmp_path, capsys, served, checkpoint, want):
    make_store(tmp_path / "s", 8, seed=15)
    with ScriptedServer(models=served) as srv:
        rc = main(["annotate", "self", "--store", str(tmp_path / "s"), "--checkpoint", checkpoint,
                   "--base-url", srv.base_url, "--no-progress"])
    err = capsys.readouterr().err
    if want is None:
        assert rc == 1 and "choose one with --model" in err and "'a'" in err
    else:
        assert rc == 0 and f"model: {want!r}" in err


def test_annotate_self_without_model_refuses_when_the_list_cannot_be_read(tmp_path, capsys):
    make_store(tmp_path / "s", 4, seed=16)
    rc = main(["annotate", "self", "--store", str(tmp_path / "s"), "--checkpoint", "/ckpt",
               "--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--no-progress"])
    assert rc == 1 and "give --model" in capsys.readouterr().err
