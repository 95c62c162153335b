"""`spanroute data import` of rollouts from another tool: ids and `correct` derived, and said so."""

from __future__ import annotations

import pytest

from datastore import Store
from datastore.ids import group_id_of, prompt_id_of, rollout_id_of
from datastore.io import derive_missing
from tests.datastore_fixtures import write_jsonl
from train.cli import main

P1, P2 = "What is 2 + 2?", "What is 3 * 3?"


def _ids(prompt: str, response: str, model: str, index: int, group: str | None = None) -> tuple[str, str, str]:
    pid = prompt_id_of(prompt)
    gid = group or group_id_of(pid, model, "")
    return pid, gid, rollout_id_of(gid, pid, response, model, index)


# name, source rows, extra CLI args, expected (prompt_id, group_id, rollout_id, correct) per row
CASES = [
    ("prompt-response-reward",
     [dict(prompt=P1, response="4", reward=1.0), dict(prompt=P1, response="5", reward=0.0),
      dict(prompt=P2, response="9", reward=0.5)], [],
     [(*_ids(P1, "4", "", 0), True), (*_ids(P1, "5", "", 1), False), (*_ids(P2, "9", "", 0), True)]),
    ("same text twice in a group: two rows",
     [dict(prompt=P1, response="4", reward=1), dict(prompt=P1, response="4", reward=1)], [],
     [(*_ids(P1, "4", "", 0), True), (*_ids(P1, "4", "", 1), True)]),
    ("model splits groups",
     [dict(prompt=P1, response="4", reward=1, model="a"), dict(prompt=P1, response="4", reward=1, model="b")], [],
     [(*_ids(P1, "4", "a", 0), True), (*_ids(P1, "4", "b", 0), True)]),
    ("--correct-above 0.5",
     [dict(prompt=P1, response="4", reward=1.0), dict(prompt=P1, response="4.0", reward=0.5),
      dict(prompt=P1, response="x", reward=-1.0)], ["--correct-above", "0.5"],
     [(*_ids(P1, "4", "", 0), True), (*_ids(P1, "4.0", "", 1), False), (*_ids(P1, "x", "", 2), False)]),
    ("mapped group column is kept",
     [dict(prompt=P1, response="4", reward=1, batch="g7"), dict(prompt=P2, response="9", reward=0, batch="g7")],
     ["--map", "batch=group_id"],
     [(*_ids(P1, "4", "", 0, "g7"), True), (*_ids(P2, "9", "", 1, "g7"), False)]),
    ("given correct and ids are kept; nulls derived",
     [dict(prompt=P1, response="4", reward=0.0, correct=True, prompt_id="p1", rollout_id="mine"),
      dict(prompt=P1, response="5", reward=1.0, correct=None, prompt_id="p1"),
      dict(prompt=P1, response="6", reward=None)], [],
     [("p1", group_id_of("p1", "", ""), "mine", True),
      ("p1", group_id_of("p1", "", ""), rollout_id_of(group_id_of("p1", "", ""), "p1", "5", "", 1), True),
      (*_ids(P1, "6", "", 0), None)]),
]


@pytest.mark.parametrize("name,rows,args,want", CASES, ids=[c[0] for c in CASES])
def test_import_derives_ids_and_correct(tmp_path, capsys, monkeypatch, name, rows, args, want):
    monkeypatch.setenv("COLUMNS", "250")
    src = tmp_path / "other_tool.jsonl"
    write_jsonl(src, [{**r, "reference": "ref"} for r in rows])
    store = str(tmp_path / "store")
    assert main(["data", "import", str(src), "--store", store, *args]) == 0
    out = capsys.readouterr().out
    got = Store(store).read().to_pylist()
    assert [(r["prompt_id"], r["group_id"], r["rollout_id"], r["correct"]) for r in got] == want
    assert all(r["reference"] == "ref" for r in got)
    n_derived_correct = sum(1 for r in rows if r.get("correct") is None and r.get("reward") is not None)
    if n_derived_correct:
        assert "derived correct = reward > " in out and f"for {n_derived_correct} of {len(rows)} rows" in out
    if any("rollout_id" not in r for r in rows):
        assert "derived rollout_id = rollout_id_of(" in out
    assert Store(store).versions()[-1].lineage["extra"]["derived"]


def test_reimport_gives_the_same_ids_and_is_refused_as_a_duplicate(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [dict(prompt=P1, response="4", reward=1.0)])
    store = str(tmp_path / "store")
    assert main(["data", "import", str(src), "--store", store]) == 0
    capsys.readouterr()
    assert main(["data", "import", str(src), "--store", store]) == 1
    assert "already in the store" in capsys.readouterr().err


def test_a_row_without_a_prompt_is_refused_not_derived(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [dict(prompt=P1, response="4", reward=1.0), dict(response="5", reward=0.0)])
    assert main(["data", "import", str(src), "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "prompt" in err and "line 2" in err


def test_nothing_to_derive_leaves_the_table_alone():
    import pyarrow as pa

    t = pa.table({"prompt": ["q"], "response": ["a"], "prompt_id": ["p"], "group_id": ["g"], "rollout_id": ["r"]})
    assert derive_missing(t) == (t, [])
