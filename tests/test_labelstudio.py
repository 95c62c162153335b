"""Push / annotate / pull against a REAL Label Studio 1.23.2 (started by the session fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from annotate import labelstudio as ls
from spans import select_spans
from tests.labelstudio_fixtures import (  # noqa: F401
    UNICODE_RESPONSE, chromium, ls_client, ls_project, ls_server, make_store, rollout_rows,
)

pytestmark = pytest.mark.labelstudio


def _tasks(client, project):
    return {t.data["rollout_id"]: t for t in client.tasks.list(project=project, fields="all")}


def _annotate_like_ui(client, task, result, *, cancelled=False):
    """POST the annotation body the UI's Submit/Skip sends (result items keep the prediction's
    ids; a changed predicted region is marked origin=prediction-changed)."""
    pred = (task.predictions or [None])[0]
    return client.annotations.create(
        id=task.id, result=result, was_cancelled=cancelled, ground_truth=False, lead_time=4.2,
        parent_prediction=getattr(pred, "id", None) if pred else None,
    )


def test_push_creates_tasks_with_predictions_and_is_idempotent(tmp_path, ls_client, ls_project):
    store = make_store(tmp_path / "store", n=6)
    res = ls.push(store, ls_client, ls_project, batch_size=4)
    assert (res.selected, res.created, res.already) == (6, 6, 0)
    tasks = _tasks(ls_client, ls_project)
    assert sorted(tasks) == [f"r{i:04d}" for i in range(6)]
    t0 = tasks["r0000"]
    assert t0.data["response"] == UNICODE_RESPONSE
    (pred,) = t0.predictions
    assert pred.model_version == "rule:rule@rulehash01" and pred.score == 1.0
    regions = [r["value"] for r in pred.result if r["type"] == "labels"]
    for v in regions:  # predictions carry code-point offsets and the exact text
        assert UNICODE_RESPONSE[v["start"]:v["end"]] == v["text"]
    assert {v["labels"][0] for v in regions} == {"KeySpan", "ErrorSpan"}

    again = ls.push(store, ls_client, ls_project)
    assert (again.created, again.already) == (0, 6)
    assert len(list(ls_client.tasks.list(project=ls_project, fields="task_only"))) == 6

    # What a client killed mid-batch can leave: the server finished a batch the rerun did not see.
    ls_client.projects.import_tasks(ls_project, request=[{"data": dict(tasks["r0001"].data)}], commit_to_project=True)
    healed = ls.push(store, ls_client, ls_project)
    assert (healed.created, healed.duplicates_removed) == (0, 1)
    assert len(list(ls_client.tasks.list(project=ls_project, fields="task_only"))) == 6
    assert _tasks(ls_client, ls_project)["r0001"].id == tasks["r0001"].id  # the oldest task is kept


def test_push_filters(tmp_path, ls_client, ls_project):
    store = make_store(tmp_path / "store", n=8)
    res = ls.push(store, ls_client, ls_project, flt=ls.PushFilter(only_incorrect=True, sample=2, seed=3))
    assert res.selected == res.created == 2
    rows = {r["rollout_id"]: r for r in store.read().to_pylist()}
    assert all(rows[rid]["correct"] is False for rid in _tasks(ls_client, ls_project))


def test_annotate_pull_exact_offsets_incremental(tmp_path, ls_client, ls_project):
    store = make_store(tmp_path / "store", n=3)
    v_before = store.latest_version()
    ls.push(store, ls_client, ls_project)
    tasks = _tasks(ls_client, ls_project)

    # A person moves the error span onto "𝑥 * 3 = 127" and adds a key span that crosses the CRLF
    # after the ZWJ emoji: LS saves that text with backslash-n for each \r and \n.
    resp = UNICODE_RESPONSE
    e0 = resp.index("𝑥 * 3")
    e1 = resp.index("\r\nAnswer")
    k0 = resp.index("42")
    k1 = e0  # ends right before the error span: crosses the CRLF, takes the whole ZWJ emoji
    result = [
        {"id": "s1", "from_name": "spans", "to_name": "response", "type": "labels", "origin": "prediction-changed",
         "value": {"start": e0, "end": e1, "text": resp[e0:e1], "labels": ["ErrorSpan"]}},
        {"id": "h2", "from_name": "spans", "to_name": "response", "type": "labels", "origin": "manual",
         "value": {"start": k0, "end": k1, "text": resp[k0:k1].replace("\r", "\\n").replace("\n", "\\n"),
                   "labels": ["KeySpan"]}},
        {"id": "c0", "from_name": "correct", "to_name": "response", "type": "choices", "origin": "prediction",
         "value": {"choices": ["incorrect"]}},
    ]
    _annotate_like_ui(ls_client, tasks["r0000"], result)
    _annotate_like_ui(ls_client, tasks["r0001"], [], cancelled=True)  # skipped in the UI

    res = ls.pull(store, ls_client, ls_project)
    assert res.version is not None and res.version > v_before and res.rows == 1
    assert res.cancelled == [tasks["r0001"].id]
    row = {r["rollout_id"]: r for r in store.read(res.version).to_pylist()}["r0000"]
    human = select_spans(row["spans"], source="human")
    who = ls.annotator_id(ls_client.users.whoami().id)
    assert [(s.start, s.end, s.label, s.annotator, s.text) for s in human] == sorted([
        (k0, k1, "key", who, resp[k0:k1]), (e0, e1, "error", who, resp[e0:e1])])
    assert len(select_spans(row["spans"], source="rule")) == 2  # machine spans kept
    # r0001 was skipped: no empty human set written for it
    r1 = {r["rollout_id"]: r for r in store.read(res.version).to_pylist()}["r0001"]
    assert select_spans(r1["spans"], source="human") == []
    info = store.version_info(res.version)
    lab = info.lineage["extra"]["labelstudio"]
    assert lab["project"] == ls_project and lab["task_ids"] == [tasks["r0000"].id]
    assert lab["annotator_ids"] == [who] and lab["pull_time"] and lab["cancelled_task_ids"] == [tasks["r0001"].id]
    assert lab["human_verdicts"] == {"r0000": "incorrect"}

    assert ls.pull(store, ls_client, ls_project).version is None  # nothing new
    assert store.latest_version() == res.version

    # the person changes their annotation: only that is pulled, replacing their spans
    ann = tasks["r0000"].id
    (a,) = [x for x in ls_client.tasks.get(str(ann)).annotations]
    a_id = a["id"] if isinstance(a, dict) else a.id
    time.sleep(1.1)
    ls_client.annotations.update(id=a_id, result=result[:1])
    res2 = ls.pull(store, ls_client, ls_project)
    assert res2.version == res.version + 1
    row = {r["rollout_id"]: r for r in store.read(res2.version).to_pylist()}["r0000"]
    assert [(s.start, s.end, s.label) for s in select_spans(row["spans"], source="human")] == [(e0, e1, "error")]

    st = ls.status(store, ls_client, ls_project)
    assert (st.pushed, st.annotated, st.cancelled, st.pulled) == (3, 1, 1, 1)  # skipped is not annotated
    assert set(st.agreement) == {"rule:rule"} and 0 <= st.agreement["rule:rule"]["overall"]["char_f1"] <= 1


def test_wrong_text_is_refused_and_nothing_written(tmp_path, ls_client, ls_project):
    store = make_store(tmp_path / "store", n=2)
    ls.push(store, ls_client, ls_project)
    tasks = _tasks(ls_client, ls_project)
    bad = [{"id": "x", "from_name": "spans", "to_name": "response", "type": "labels",
            "value": {"start": 0, "end": 5, "text": "WRONG", "labels": ["KeySpan"]}}]
    _annotate_like_ui(ls_client, tasks["r0001"], bad)
    v = store.latest_version()
    with pytest.raises(ls.LabelStudioError, match=rf"task {tasks['r0001'].id} \(rollout r0001\).*'WRONG'.*refused"):
        ls.pull(store, ls_client, ls_project)
    assert store.latest_version() == v
    assert not (store.path / "labelstudio" / f"pull-{ls_project}.json").exists()


# White space the browser renders differently (DESIGN §6): a tab, a run of spaces, spaces before a
# line break, a no-break space, CRLF, a combining accent.
WS_RESPONSE = "Step 1:\t17 +  25 = 42   \nStep 2:\u00a042 * 3 = 126\r\ncafe\u0301 ok\nAnswer: 126"


def test_pull_accepts_the_ui_rendered_text_of_white_space(tmp_path, ls_client, ls_project):
    row = {**rollout_rows(1, unicode_first=False)[0], "response": WS_RESPONSE, "spans": []}
    store = make_store(tmp_path / "store", rows=[row])
    ls.push(store, ls_client, ls_project)
    (task,) = _tasks(ls_client, ls_project).values()
    r = WS_RESPONSE
    drawn = [  # (start, end, label, the text the UI saves for that region)
        (0, r.index(" = 42"), "KeySpan", "Step 1: 17 + 25"),
        (r.index("42   "), r.index(" * 3"), "KeySpan", "42\\nStep 2:\u00a042"),
        (r.index("126\r"), r.index(" ok"), "ErrorSpan", "126\\n\\ncafe\u0301"),
    ]
    result = [{"id": f"h{i}", "from_name": "spans", "to_name": "response", "type": "labels", "origin": "manual",
               "value": {"start": a, "end": b, "text": text, "labels": [label]}}
              for i, (a, b, label, text) in enumerate(drawn)]
    _annotate_like_ui(ls_client, task, result)
    res = ls.pull(store, ls_client, ls_project)
    assert res.version is not None and res.rows == 1
    (got,) = store.read(res.version).to_pylist()
    human = select_spans(got["spans"], source="human")
    assert [(s.start, s.end, s.text) for s in human] == [(a, b, r[a:b]) for a, b, _, _ in drawn]  # from offsets


_PUSH_CHILD = textwrap.dedent("""
    import sys
    from annotate import labelstudio as ls
    from datastore import Store
    client = ls.connect(sys.argv[1], ls.read_token())
    ls.push(Store(sys.argv[2]), client, int(sys.argv[3]), batch_size=1,
            progress=lambda n: print("batch", flush=True))
""")


def test_killed_push_rerun_leaves_each_rollout_once(tmp_path, ls_server, ls_client, ls_project):
    n = 30
    store = make_store(tmp_path / "store", n=n)
    env = {**os.environ, "SPANROUTE_LS_TOKEN": ls_server.token}
    child = subprocess.Popen([sys.executable, "-c", _PUSH_CHILD, ls_server.url, str(store.path), str(ls_project)],
                             env=env, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    for _ in range(5):  # let a few one-task batches land, then kill it mid-flight
        assert child.stdout.readline().startswith("batch")
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = len(list(ls_client.tasks.list(project=ls_project, fields="task_only")))
    assert 5 <= partial < n
    res = ls.push(store, ls_client, ls_project)
    assert res.already + res.created == n
    ids = [t.data["rollout_id"] for t in ls_client.tasks.list(project=ls_project, fields="task_only", include="id,data")]
    assert sorted(ids) == [f"r{i:04d}" for i in range(n)]  # each exactly once


_LS_ENV = ("SPANROUTE_LS_URL", "SPANROUTE_LS_TOKEN", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")
_REPO = str(Path(__file__).resolve().parents[1])


def _cli(*args, env_extra=None, cwd=None):
    """`spanroute ls …` in a child process, seeing only the Label Studio variables given here."""
    env = {k: v for k, v in os.environ.items() if k not in _LS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "train.cli", "ls", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)


def test_cli_push_pull_status_and_errors(tmp_path, ls_server):
    from annotate.labelstudio.server import free_port

    store = make_store(tmp_path / "store", n=2)
    env = {"SPANROUTE_LS_URL": ls_server.url, "SPANROUTE_LS_TOKEN": ls_server.token}
    r = _cli("push", "--store", str(store.path), env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "2 created" in r.stdout
    r = _cli("status", "--store", str(store.path), "--json", env_extra=env)
    assert r.returncode == 0 and json.loads(r.stdout)["pushed"] == 2

    v = store.latest_version()
    down = f"http://127.0.0.1:{free_port()}"
    r = _cli("pull", "--store", str(store.path), "--url", down, env_extra=env)
    err = " ".join(r.stderr.split())  # rich wraps long lines on a narrow non-tty
    assert r.returncode == 1 and down in err and "is the server running" in err
    r = _cli("pull", "--store", str(store.path), env_extra={**env, "SPANROUTE_LS_TOKEN": "f" * 40})
    err = " ".join(r.stderr.split())
    assert r.returncode == 1 and ls_server.url in err and "rejected the token" in err
    assert ls_server.token not in r.stderr + r.stdout
    assert store.latest_version() == v and not (store.path / "labelstudio").exists()


def test_cli_reads_the_sdk_variables_after_its_own(tmp_path, ls_server):
    """LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY work alone; SPANROUTE_LS_* win over them; --url wins
    over both. Run from a folder outside the repo."""
    from annotate.labelstudio.server import free_port

    store = make_store(tmp_path / "store", n=2)
    project = ("--project", f"sdk-env {tmp_path.name}"[:50])  # not the default title other tests use
    sdk = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.token}
    r = _cli("push", "--store", str(store.path), *project, env_extra=sdk, cwd=tmp_path)
    assert r.returncode == 0 and "2 created" in r.stdout, r.stderr

    down = f"http://127.0.0.1:{free_port()}"
    r = _cli("status", "--store", str(store.path), *project, env_extra={**sdk, "SPANROUTE_LS_URL": down},
             cwd=tmp_path)
    assert r.returncode == 1 and down in " ".join(r.stderr.split())  # ours first: the dead URL is tried
    r = _cli("status", "--store", str(store.path), *project, "--url", ls_server.url, "--json",
             env_extra={**sdk, "SPANROUTE_LS_URL": down}, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["pushed"] == 2, r.stderr  # the flag first
    r = _cli("status", "--store", str(store.path), *project, env_extra={**sdk, "SPANROUTE_LS_TOKEN": "f" * 40},
             cwd=tmp_path)
    assert r.returncode == 1 and "rejected the token" in " ".join(r.stderr.split())
    assert ls_server.token not in r.stdout + r.stderr
