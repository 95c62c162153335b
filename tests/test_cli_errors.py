"""Errors speak CLI, not Python (#16 item 8): what to do next is a command to run; Python names
appear only as the library's alternative."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pyarrow as pa
import pytest

from datastore import Lineage, Store, StoreError
from tests.datastore_fixtures import make_rows, make_table, write_jsonl
from train.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("annotate", "datastore", "spans", "train")
CALL = re.compile(r"\b[a-z_]\w*\(\)")  # `update()`: a Python call told to a shell user


def _raised_strings():
    """(file:line, text) of every string literal inside a `raise` in the packages."""
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            src = f.read_text()
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    parts = [n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                    yield f"{f.relative_to(ROOT)}:{node.lineno}", " ".join(parts)


def test_no_error_tells_a_user_to_call_a_python_function():
    offenders = [(where, text) for where, text in _raised_strings() if CALL.search(text)]
    assert not offenders, offenders


@pytest.fixture()
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_importing_a_stored_rollout_names_the_commands_that_change_it(cwd, capsys):
    write_jsonl(cwd / "a.jsonl", make_rows(2))
    assert main(["data", "import", "a.jsonl", "--store", "s"]) == 0
    capsys.readouterr()
    assert main(["data", "import", "a.jsonl", "--store", "s"]) == 1
    err = _err(capsys)
    assert "is already in the store (version 1): a rollout is added once" in err
    assert "`spanroute annotate`" in err and "()" not in err


def test_an_empty_store_names_the_commands_that_fill_it(cwd, capsys):
    (cwd / "s" / "rollouts.lance").mkdir(parents=True)  # a creator killed before its first commit
    assert main(["data", "show", "--store", "s"]) == 1
    assert "store s is empty (no versions yet): `spanroute rollouts generate` or `spanroute data import`" in _err(capsys)


def test_a_lost_update_says_rerun_the_command(cwd):
    store = Store("s")
    store.write(make_table(2))
    rid = store.read(columns=["rollout_id"])["rollout_id"][0].as_py()
    store.update(pa.table({"rollout_id": [rid], "error_type": ["logic"]}))  # someone else, after v1
    with pytest.raises(StoreError) as e:
        store.update(pa.table({"rollout_id": [rid], "error_type": ["arithmetic"]}),
                     lineage=Lineage(parent_version=1))
    msg = str(e.value)
    assert "nothing was written: rerun the command, which reads the latest version (2)" in msg
    assert not CALL.search(msg)
