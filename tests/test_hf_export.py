"""HF exports say what they are (#16 item 9): a description, the store version and the lineage in
`dataset_info`, and `sampling` / `skill` as nested features, nothing dropped."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pytest

from datastore import Store
from datastore.hf import SAMPLING_STRUCT, SKILL_STRUCT, nest_json
from tests.datastore_fixtures import make_table
from train.cli import main


def test_cli_hf_export_carries_description_version_lineage_and_nested_features(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("runs/store")
    store.write(make_table(4), message="generate", )
    store.update(pa.table({"rollout_id": ["r00001"], "error_type": ["logic"]}), message="fix one")
    store.tag("gen-a", 2)
    assert main(["data", "export", "--store", "runs/store", "--out", "hf", "--format", "hf"]) == 0
    ds = datasets.load_from_disk("hf")
    head, _, lineage = ds.info.description.partition("Lineage, one store version per line, oldest first:\n")
    assert f"version 2 (tags: gen-a) of store {(tmp_path / 'runs/store').resolve()}, 4 rows" in head
    assert str(ds.info.version) == "2.0.0" and ds.info.dataset_name == "spanroute-rollouts"
    chain = [json.loads(ln) for ln in lineage.splitlines()]
    assert [(c["version"], c["message"], c["lineage"]["operation"]) for c in chain] == [
        (1, "generate", "write"), (2, "fix one", "update")]
    assert chain[1]["lineage"]["parent_version"] == 1 and chain[1]["tags"] == ["gen-a"]
    assert ds.features["skill"]["golden_workflow"].dtype == "string"
    assert ds.features["sampling"]["n"].dtype == "int64"
    row = ds[0]
    assert row["sampling"] == {"temperature": 1.0, "top_p": None, "top_k": None, "max_new_tokens": None,
                               "stop": None, "n": 4, "seed": None, "backend": None, "other": None}
    assert row["skill"] == {"success_analysis": "s", "mistake_analysis": "m", "golden_workflow": "g", "other": None}
    assert [r["rollout_id"] for r in ds] == store.read(2)["rollout_id"].to_pylist()


@pytest.mark.parametrize("raw, expected", [
    ('{"temperature": 0.7, "n": 8, "stop": ["\\n\\n"], "seed": 3, "backend": "hf", "top_p": 1, "top_k": 0, '
     '"max_new_tokens": 128}',
     {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 128, "stop": ["\n\n"], "n": 8, "seed": 3,
      "backend": "hf", "other": None}),
    ('{"n": 2, "min_p": 0.1}', {"n": 2, "other": '{"min_p": 0.1}'}),          # unknown key kept
    ('{"n": "eight", "seed": true}', {"other": '{"n": "eight", "seed": true}'}),  # mistyped values kept
    ('[1, 2]', {"other": "[1, 2]"}),                                          # not an object
    ("not json", {"other": "not json"}),                                      # not JSON at all
    (None, None),
])
def test_sampling_nests_and_keeps_every_key(raw, expected):
    [got] = nest_json(pa.array([raw], pa.string()), SAMPLING_STRUCT).to_pylist()
    if expected is None:
        assert got is None
        return
    assert got == {f.name: expected.get(f.name) for f in SAMPLING_STRUCT}


def test_skill_with_extra_keys_keeps_them():
    [got] = nest_json(pa.array(['{"golden_workflow": "g", "success_rate": 0.5}']), SKILL_STRUCT).to_pylist()
    assert got["golden_workflow"] == "g" and json.loads(got["other"]) == {"success_rate": 0.5}
