"""`spanroute data ...` through the real CLI entry point (train.cli.main)."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq

from datastore import Store
from tests.datastore_fixtures import make_rows, write_jsonl
from train.cli import main


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def test_data_commands_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    store = str(tmp_path / "store")
    rows = make_rows(6)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{("text" if k == "response" else k): v for k, v in r.items()} for r in rows[:4]])
    assert main(["data", "import", str(src), "--store", store, "--map", "text=response",
                 "--message", "first import"]) == 0
    assert "imported 4 rows" in capsys.readouterr().out
    write_jsonl(tmp_path / "more.jsonl", rows[4:])
    assert main(["data", "import", str(tmp_path / "more.jsonl"), "--store", store]) == 0
    assert main(["data", "tag", "gen-run1", "--store", store, "--version", "1", "--meta", "seed=3"]) == 0
    capsys.readouterr()

    assert main(["data", "log", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "first import" in out and "gen-run1" in out and "import" in out
    assert main(["data", "log", "--store", store, "--json"]) == 0
    logged = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["version"] for x in logged] == [1, 2] and logged[0]["lineage"]["extra"]["mapping"] == {"text": "response"}

    assert main(["data", "show", "--store", store, "--version", "gen-run1", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "r00000" in out and "r00001" in out and "r00002" not in out and "4 rows" in out

    assert main(["data", "diff", "gen-run1", "2", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "+2 rows" in out and "r00004" in out

    assert main(["data", "verify", "--store", store]) == 0
    assert "OK (6 rows)" in capsys.readouterr().out

    source = Store(store).read(2).to_pylist()
    for fmt, name in (("hf", "hfdir"), ("parquet", "x.parquet"), ("jsonl", "x.jsonl")):
        assert main(["data", "export", "--store", store, "--version", "2", "--out", str(tmp_path / name),
                     "--format", fmt]) == 0
    assert datasets.load_from_disk(str(tmp_path / "hfdir")).to_list() == Store(store).to_hf(2).to_list()
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == source
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 6


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    store = str(tmp_path / "store")
    good = tmp_path / "good.jsonl"
    write_jsonl(good, make_rows(2))
    assert main(["data", "import", str(good), "--store", store]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text().splitlines()[0].replace('"r00000"', '"zz"') + "\n{not json\n")
    capsys.readouterr()
    assert main(["data", "import", str(bad), "--store", store]) == 1
    err = _flat(capsys.readouterr().err)
    assert "bad.jsonl line 2: malformed JSON" in err and "Traceback" not in err
    assert main(["data", "tag", "no spaces", "--store", store]) == 1
    assert "bad tag name" in _flat(capsys.readouterr().err)
    assert main(["data", "show", "--store", store, "--version", "7"]) == 1
    assert "no version 7" in _flat(capsys.readouterr().err)
    assert main(["data", "import", str(good), "--store", store, "--map", "oops"]) == 1
    assert "expected SRC=DST" in _flat(capsys.readouterr().err)
    assert Store(store).latest_version() == 1


def test_verify_exits_1_on_problems(tmp_path, capsys):
    import lance
    import pyarrow as pa

    from datastore.schema import ROLLOUT_SCHEMA

    store = Store(tmp_path / "store")
    store.write(pa.Table.from_pylist(make_rows(3), schema=ROLLOUT_SCHEMA))
    rows = make_rows(1, 3)
    rows[0]["spans"] = [dict(rows[0]["spans"][0], start=0)]
    lance.write_dataset(pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), store.uri, mode="append")
    assert main(["data", "verify", "--store", str(store.path)]) == 1
    out = capsys.readouterr().out
    assert "column 'spans'[0]" in out and "1 problem" in out


def test_every_data_command_has_teaching_help(capsys):
    for cmd in ("import", "log", "show", "diff", "tag", "export", "verify"):
        assert main(["data", cmd, "--help"]) == 0
        assert "--store" in capsys.readouterr().out
