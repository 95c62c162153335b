"""A path that holds no store is one error everywhere (#16 item 4), run from a folder outside the repo."""

from __future__ import annotations

import pytest

from datastore import NotAStoreError, Store
from tests.datastore_fixtures import make_table
from train.cli import main

# Every command that reads a store, with the arguments it needs besides --store.
READERS = [
    ["data", "log"],
    ["data", "show"],
    ["data", "diff", "1", "2"],
    ["data", "tag", "gen-x"],
    ["data", "export", "--out", "x.jsonl", "--format", "jsonl"],
    ["data", "verify"],
    ["spans", "show"],
    ["annotate", "rule"],
    ["skills", "extract"],
    ["shards", "build", "--model", "toy", "--out", "shards"],
]


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    """cwd = tmp_path holding one real store at runs/store."""
    monkeypatch.chdir(tmp_path)
    Store("runs/store").write(make_table(4), message="seed")
    return tmp_path


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("path, hint", [
    ("runs/nostore", "(did you mean runs/store?)"),               # a near name next to it
    ("runs/store/rollouts.lance", "(did you mean runs/store?)"),  # the table folder inside a store
    ("runs", "(did you mean runs/store?)"),                       # the folder above the store
    ("elsewhere/zzz", "(`spanroute rollouts generate` or `spanroute data import` creates one)"),  # nothing near
])
def test_every_reader_refuses_a_path_that_is_no_store(runs, capsys, cmd, path, hint):
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert main([*cmd, "--store", path]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: not a spanroute store: {path} {hint}" in err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # nothing created


def test_library_reads_raise_the_same_error(runs):
    for call in (lambda s: s.read(), lambda s: s.resolve("1"), lambda s: s.tag("t"), lambda s: s.export(None, "o", "jsonl")):
        with pytest.raises(NotAStoreError, match=r"^not a spanroute store: runs/nostor \(did you mean runs/store\?\)$"):
            call(Store("runs/nostor"))
    with pytest.raises(NotAStoreError):
        Store.open("runs/nostor")
    assert Store.open("runs/store").latest_version() == 1


def test_creating_commands_still_create(runs, tmp_path):
    from tests.datastore_fixtures import make_rows, write_jsonl

    write_jsonl(tmp_path / "in.jsonl", make_rows(2, tag="n"))
    assert main(["data", "import", "in.jsonl", "--store", "runs/new"]) == 0
    assert Store.open("runs/new").latest_version() == 1
