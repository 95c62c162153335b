"""The datastore on a real on-disk Lance store: round trips, versions, tags, diff, column-only
updates, bad input, verify and exports."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datastore import DataError, Lineage, Store, StoreError
from datastore.schema import ROLLOUT_SCHEMA, SCHEMA_VERSION, TOKEN_COLUMNS
from tests.datastore_fixtures import make_rows, make_table, span, write_jsonl


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def test_round_trip_every_column_type_with_astral_and_zwj_spans(store):
    table = make_table(9)
    v = store.write(table, message="gen", lineage=Lineage(stage="generate", model="toy-policy"))
    assert v == 1 and store.latest_version() == 1
    back = store.read()
    assert back.schema.equals(ROLLOUT_SCHEMA)
    assert back.to_pylist() == table.to_pylist()
    row = back.to_pylist()[0]
    texts = [s["text"] for s in row["spans"]]
    assert texts == ["𝑥 + 4 = 7", "👩‍💻"]  # code-point offsets survived
    assert all(row["response"][s["start"]:s["end"]] == s["text"] for s in row["spans"])
    assert store.verify().ok


def test_missing_nullable_columns_are_filled_and_types_widened(store):
    rows = [{"rollout_id": "a", "prompt_id": "p", "group_id": "g", "prompt": "Q", "response": "R",
             "reward": 1}]  # an int reward is a float without guessing
    tbl = pa.table({k: [v] for k, v in rows[0].items()})  # reward int64 -> float32
    store.write(tbl)
    got = store.read().to_pylist()[0]
    assert got["reward"] == 1.0 and got["spans"] is None and got["annotation"] is None
    assert store.read().schema.field("reward").type == pa.float32()


def test_time_travel_to_every_version_after_five_writes(store):
    snapshots = {}
    lin = Lineage(stage="generate", model="toy")
    snapshots[store.write(make_table(4, 0), "w1", lin)] = None
    snapshots[store.write(make_table(4, 4), "w2", lin)] = None
    snapshots[store.update(pa.table({"rollout_id": ["r00001"], "error_type": ["sign"]}), "u3",
                           Lineage(stage="annotate", annotator="rule"))] = None
    snapshots[store.add_columns(pa.table({"rollout_id": ["r00002"], "judge": pa.array([0.5], pa.float32())}),
                                "a4", Lineage(stage="annotate"))] = None
    snapshots[store.write(make_table(2, 8), "w5", lin)] = None
    assert list(snapshots) == [1, 2, 3, 4, 5]
    # capture after the fact and compare to what each version must hold
    expected_rows = {1: 4, 2: 8, 3: 8, 4: 8, 5: 10}
    for v, n in expected_rows.items():
        t = store.read(v)
        assert t.num_rows == n, v
    assert store.read(2).to_pylist()[1]["error_type"] is None
    assert store.read(3).to_pylist()[1]["error_type"] == "sign"
    assert "judge" not in store.read(3).column_names
    assert store.read(4).column("judge").to_pylist()[:3] == [None, None, 0.5]
    assert store.read(5).column("judge").to_pylist()[8:] == [None, None]  # appended rows get nulls
    infos = store.versions()
    assert [i.message for i in infos] == ["w1", "w2", "u3", "a4", "w5"]
    assert [i.rows for i in infos] == [4, 8, 8, 8, 10]
    lin3 = infos[2].lineage
    assert lin3["stage"] == "annotate" and lin3["annotator"] == "rule" and lin3["operation"] == "update"
    assert lin3["parent_version"] == 2 and lin3["rows_written"] == 1 and lin3["rows_before"] == 8
    assert lin3["schema_version"] == SCHEMA_VERSION and lin3["extra"]["columns"] == ["error_type"]
    assert infos[0].lineage["parent_version"] is None and infos[4].lineage["model"] == "toy"
    with pytest.raises(StoreError, match="no version 9"):
        store.read(9)


def test_tags_with_metadata_and_name_rules(store):
    store.write(make_table(3), "w1")
    store.write(make_table(3, 3), "w2")
    assert store.tag("gen-run1", 1, metadata={"run": "1", "seed": 7}) == 1
    assert store.tag("ann-api-0001") == 2
    assert store.resolve("gen-run1") == 1 and store.read("gen-run1").num_rows == 3
    assert store.resolve("2") == 2
    tags = store.tags()
    assert tags["gen-run1"]["metadata"] == {"run": "1", "seed": "7"} and tags["ann-api-0001"]["version"] == 2
    assert store.versions()[0].tags == ("gen-run1",)
    for bad in ("has space", "slash/tag", "ünï", ""):
        with pytest.raises(StoreError, match="bad tag name"):
            store.tag(bad)
    with pytest.raises(StoreError, match="already exists"):
        store.tag("gen-run1", 2)
    with pytest.raises(StoreError, match="no tag 'nope'"):
        store.read("nope")


def test_diff_rows_added_removed_changed_and_columns_added(store):
    store.write(make_table(6), "w1")
    store.update(pa.table({"rollout_id": ["r00001", "r00003"], "error_type": ["x", "y"]}))
    store.add_columns(pa.table({"rollout_id": ["r00000"], "note": ["n"]}))
    store.write(make_table(2, 6), "w4")
    d = store.diff(1, 4)
    assert d.added == ["r00006", "r00007"] and d.removed == []
    assert d.changed == {"r00001": ("error_type",), "r00003": ("error_type",)}
    assert d.columns_added == ["note"] and d.changed_by_column == {"error_type": 2}
    back = store.diff(4, 1)
    assert back.removed == ["r00006", "r00007"] and back.columns_removed == ["note"]
    assert store.diff(2, 2).empty
    assert "+2 rows" in d.summary()


def _data_files(store: Store) -> dict[str, int]:
    root = os.path.join(store.uri, "data")
    return {f: os.path.getsize(os.path.join(root, f)) for f in os.listdir(root)}


def _token_files(store: Store, version: int) -> set[str]:
    """Data files that hold a token column's field ids at ``version``."""
    ds = store.dataset(version)
    ids = set()
    for f in ds.lance_schema.fields():
        if f.name() in TOKEN_COLUMNS:
            ids.add(f.id())
            ids.update(c.id() for c in f.children())
    out = set()
    for frag in ds.get_fragments():
        for df in frag.data_files():
            if ids & set(df.fields):
                out.add(df.path)
    return out


def test_update_and_add_columns_never_touch_token_files(store):
    store.write(make_table(40), "w1")
    store.write(make_table(40, 40), "w2")
    before = _data_files(store)
    tokens_before = _token_files(store, 2)
    assert tokens_before and tokens_before <= set(before)
    rows = make_rows(80)
    targets = rows[1::2][::-1]  # any order: matched by rollout_id
    new_spans = [[span(r["response"], r["response"][-3:], "key", "api", "gpt")] for r in targets]
    v3 = store.update(pa.table({"rollout_id": [r["rollout_id"] for r in targets],
                                "spans": pa.array(new_spans, ROLLOUT_SCHEMA.field("spans").type),
                                "error_type": ["e"] * 40}), "ann", Lineage(stage="annotate", annotator="gpt"))
    v4 = store.add_columns(pa.table({"rollout_id": ["r00005"], "judge_score": pa.array([0.9], pa.float32())}))
    after = _data_files(store)
    for name, size in before.items():  # nothing rewritten or removed
        assert after[name] == size
    assert _token_files(store, v3) == tokens_before and _token_files(store, v4) == tokens_before
    assert v3 == 3 and v4 == 4
    t = store.read()
    assert t.column("error_type").to_pylist()[:2] == ["arithmetic", "e"]  # other rows keep theirs
    assert t.column("spans").to_pylist()[0] == rows[0]["spans"]
    assert t.column("spans").to_pylist()[1] == new_spans[-1]
    assert t.column("response_token_ids").to_pylist() == [r["response_token_ids"] for r in rows]
    assert store.verify().ok


def test_update_refusals_write_nothing(store):
    store.write(make_table(4), "w1")
    cases = [
        (pa.table({"rollout_id": ["zzz"], "error_type": ["x"]}), "'zzz' is not in the store"),
        (pa.table({"rollout_id": ["r00000", "r00000"], "error_type": ["x", "y"]}), "duplicate 'r00000'"),
        (pa.table({"rollout_id": ["r00000"], "response": ["x"]}), "column 'response' is part of the sample"),
        (pa.table({"rollout_id": ["r00000"], "response_token_ids": pa.array([[1]], pa.list_(pa.int32()))}),
         "part of the sample"),
        (pa.table({"rollout_id": ["r00000"], "nope": ["x"]}), "not in the store; add it first with Store.add_columns"),
        (pa.table({"rollout_id": ["r00000"], "reward": ["high"]}), "column 'reward': expected float"),
        (pa.table({"rollout_id": ["r00001"], "spans": pa.array(
            [[{"start": 0, "end": 2, "label": "key", "source": "api", "annotator": "a", "text": "zz"}]],
            ROLLOUT_SCHEMA.field("spans").type)}), "rollout_id='r00001'.*column 'spans'\\[0\\].*!= response"),
        (pa.table({"rollout_id": ["r00001"], "spans": pa.array(
            [[{"start": 0, "end": 2, "label": "maybe", "source": "api", "annotator": "a", "text": "17"}]],
            ROLLOUT_SCHEMA.field("spans").type)}), "label 'maybe' not in"),
    ]
    for table, msg in cases:
        with pytest.raises(DataError, match=msg):
            store.update(table)
    with pytest.raises(DataError, match="already exist"):
        store.add_columns(pa.table({"rollout_id": ["r00000"], "error_type": ["x"]}))
    with pytest.raises(DataError, match="type null"):
        store.add_columns(pa.table({"rollout_id": ["r00000"], "z": pa.nulls(1)}))
    assert store.latest_version() == 1


def test_bad_input_names_file_line_and_column_and_writes_nothing(store, tmp_path):
    store.write(make_table(2, 100), "seed")
    good = make_rows(3)
    cases = []
    p = tmp_path / "malformed.jsonl"
    write_jsonl(p, good)
    p.write_text(p.read_text().replace('"rollout_id": "r00002"', '"rollout_id": "r00002",,'))
    cases.append((p, r"malformed\.jsonl line 3: malformed JSON"))
    p = tmp_path / "missing.jsonl"
    write_jsonl(p, [{k: v for k, v in r.items() if k != "response"} for r in good])
    cases.append((p, r"missing\.jsonl: missing required column\(s\) \['response'\]"))
    p = tmp_path / "null_required.jsonl"
    write_jsonl(p, [good[0], {**good[1], "prompt": None}, good[2]])
    cases.append((p, r"null_required\.jsonl line 2 \(rollout_id='r00001'\): column 'prompt' is required"))
    p = tmp_path / "wrongtype.jsonl"
    write_jsonl(p, [good[0], good[1], {**good[2], "reward": "high"}])
    cases.append((p, r"wrongtype\.jsonl line 3: column 'reward': expected float"))
    p = tmp_path / "wrongtype_nested.jsonl"
    write_jsonl(p, [{**good[0], "response_token_ids": [1, "two"]}])
    cases.append((p, r"wrongtype_nested\.jsonl line 1: column 'response_token_ids'"))
    p = tmp_path / "badspan.jsonl"
    bad = dict(good[0])
    bad["spans"] = [dict(bad["spans"][0], text="𝑥 + 4 = 8")]
    write_jsonl(p, [good[1], bad])
    cases.append((p, r"badspan\.jsonl line 2 \(rollout_id='r00000'\): column 'spans'\[0\]: .*!= response"))
    p = tmp_path / "outside.jsonl"
    write_jsonl(p, [dict(good[1], spans=[dict(good[1]["spans"][0], start=90, end=95, text="x")])])
    cases.append((p, r"outside\.jsonl line 1 .*outside the response"))
    p = tmp_path / "dup.jsonl"
    write_jsonl(p, [good[0], good[1], good[0]])
    cases.append((p, r"dup\.jsonl line 3: column 'rollout_id': duplicate 'r00000' \(also at line 1\)"))
    p = tmp_path / "unknown.jsonl"
    write_jsonl(p, [dict(good[0], text="x")])
    cases.append((p, r"unknown\.jsonl line 1: unknown column 'text'"))
    p = tmp_path / "wrongtype.parquet"
    t = make_table(3).set_column(8, "reward", pa.array(["a", "b", "c"]))
    pq.write_table(t, p)
    cases.append((p, r"wrongtype\.parquet: column 'reward': expected float, got string"))
    p = tmp_path / "overflow.parquet"
    t = make_table(3)
    ids = pa.array([[1], [2], [2**40]], pa.list_(pa.int64()))
    pq.write_table(t.set_column(6, "response_token_ids", ids), p)
    cases.append((p, r"overflow\.parquet row 2 \(rollout_id='r00002'\): column 'response_token_ids': value does not fit"))
    p = tmp_path / "again.jsonl"
    write_jsonl(p, make_rows(1, 100))
    cases.append((p, r"again\.jsonl line 1: column 'rollout_id': 'r00100' is already in the store"))
    for path, msg in cases:
        with pytest.raises(DataError, match=msg):
            store.import_(path)
        assert store.latest_version() == 1, path
    assert store.read().num_rows == 2
    # the same file, fixed, goes in
    p = tmp_path / "ok.jsonl"
    write_jsonl(p, good)
    assert store.import_(p) == 2 and store.read().num_rows == 5


def test_import_with_mapping_from_jsonl_parquet_and_hf(store, tmp_path):
    import datasets

    rows = make_rows(6)
    renamed = [{("text" if k == "response" else k): v for k, v in r.items()} | {"junk": 1} for r in rows[:2]]
    write_jsonl(tmp_path / "a.jsonl", renamed)
    v1 = store.import_(tmp_path / "a.jsonl", {"text": "response", "junk": None}, "from jsonl")
    pq.write_table(make_table(2, 2).rename_columns(
        ["id" if c == "rollout_id" else c for c in ROLLOUT_SCHEMA.names]), tmp_path / "b.parquet")
    v2 = store.import_(tmp_path / "b.parquet", {"id": "rollout_id"})
    datasets.Dataset(make_table(2, 4), fingerprint="t").save_to_disk(str(tmp_path / "hf"))
    v3 = store.import_(tmp_path / "hf")
    assert (v1, v2, v3) == (1, 2, 3)
    assert store.read().to_pylist() == rows
    lin = store.versions()[0].lineage
    assert lin["stage"] == "import" and lin["extra"]["mapping"] == {"text": "response", "junk": None}
    with pytest.raises(DataError, match="--map names column"):
        store.import_(tmp_path / "b.parquet", {"nothere": "x"})


def test_hf_parquet_jsonl_exports_equal_the_source_rows(store, tmp_path):
    import datasets

    table = make_table(7)
    store.write(table, "w1")
    store.update(pa.table({"rollout_id": ["r00002"], "error_type": ["late"]}))
    from datastore.hf import hf_table

    source = store.read(2).to_pylist()
    hf = store.to_hf(2)
    assert hf.to_list() == hf_table(store.read(2)).to_pylist()  # sampling, skill nested (test_hf_export)
    assert store.to_hf(2)._fingerprint == hf._fingerprint != store.to_hf(1)._fingerprint
    store.export(2, tmp_path / "hf", "hf")
    assert datasets.load_from_disk(str(tmp_path / "hf")).to_list() == hf.to_list()
    store.export(2, tmp_path / "x.parquet", "parquet")
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == source
    store.export("2", tmp_path / "x.jsonl", "jsonl")
    lines = (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == json.loads(json.dumps(source))
    other = Store(tmp_path / "other")
    other.import_(tmp_path / "x.jsonl")  # an export re-imports to the same rows
    assert other.read().to_pylist() == source
    with pytest.raises(FileExistsError):
        store.export(2, tmp_path / "x.jsonl", "jsonl")
    with pytest.raises(ValueError, match="unknown export format"):
        store.export(2, tmp_path / "y", "csv")


def test_verify_finds_problems_written_behind_the_stores_back(store):
    import lance

    store.write(make_table(8), "w1")
    assert store.verify().ok
    rows = make_rows(2, 51)
    rows[0]["spans"] = [dict(rows[0]["spans"][0], text="nope")]
    rows[1]["rollout_id"] = "r00003"  # duplicate id
    rows[1]["group_id"] = "p0-g0"  # group p0-g0 now spans two prompts
    rows[1]["response_logprobs"] = [-1.0]
    lance.write_dataset(pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), store.uri, mode="append")
    report = store.verify()
    text = "\n".join(report.problems)
    assert not report.ok and report.version == 2
    assert "rollout_id='r00051'): column 'spans'[0]" in text
    assert "duplicate 'r00003'" in text
    assert "group 'p0-g0': rows disagree on 'prompt_id'" in text
    assert "response_logprobs has 1" in text
    assert store.verify(1).ok
    assert store.versions()[1].lineage == {}  # a foreign commit has no lineage, and that is shown


def test_empty_store_reads_clearly(store):
    assert store.latest_version() is None and store.versions() == []
    # a store that was never written has no table on disk yet: reads name it and the commands that create one
    with pytest.raises(StoreError, match="not a spanroute store: .*`spanroute rollouts generate` or `spanroute data import` creates one"):
        store.read()
    with pytest.raises(DataError, match="no rows"):
        store.write(make_table(0))


def test_update_from_an_old_version_refuses_to_overwrite_a_later_change(store):
    store.write(make_table(4), "w1")
    a = pa.table({"rollout_id": ["r00001"], "error_type": ["by-a"]})
    b = pa.table({"rollout_id": ["r00001"], "error_type": ["by-b"]})
    assert store.update(a, "a", Lineage(stage="annotate", annotator="a", parent_version=1)) == 2
    with pytest.raises(StoreError, match="column 'error_type' of rollout_id='r00001' changed between version 1 and 2"):
        store.update(b, "b", Lineage(stage="annotate", annotator="b", parent_version=1))
    # other rows and other columns read at v1 are still fine, and the parent is kept in lineage
    c = pa.table({"rollout_id": ["r00002"], "error_type": ["by-c"]})
    assert store.update(c, "c", Lineage(stage="annotate", parent_version=1)) == 3
    lin = store.versions()[-1].lineage
    assert lin["parent_version"] == 1 and lin["extra"]["read_version"] == 2
    assert store.read().column("error_type").to_pylist()[1:3] == ["by-a", "by-c"]


def test_create_race_loser_appends_instead_of_overwriting(store, monkeypatch):
    store.write(make_table(3), "winner")
    loser = Store(store.path)
    real_open, calls = loser._open, []

    def stale_once(version=None):  # fault injection: the loser saw an empty store a moment ago
        calls.append(version)
        return None if len(calls) == 1 else real_open(version)

    monkeypatch.setattr(loser, "_open", stale_once)
    assert loser.write(make_table(2, 3), "loser") == 2
    assert store.read(1).num_rows == 3 and store.read().num_rows == 5
    assert [i.message for i in store.versions()] == ["winner", "loser"]
