"""The Hugging Face `datasets` view of one store version: nested features and a dataset card.

The store keeps `sampling` and `skill` as JSON strings (DESIGN §2); an HF export turns them into
nested features, so `ds[0]["skill"]["golden_workflow"]` works and the Hub viewer shows columns.
Keys outside the declared struct (and any value that is not a JSON object, or has another type)
are kept, as JSON, in the struct's `other` field: nothing is dropped. The `DatasetInfo` says what
the data is (store, version, tags, rows, schema) and carries the lineage of every store version up
to this one, one JSON object per line, oldest first.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from datastore.schema import SCHEMA_VERSION

# What `train.rollouts.generate.sampling_json` writes.
SAMPLING_STRUCT = pa.struct([
    pa.field("temperature", pa.float64()), pa.field("top_p", pa.float64()), pa.field("top_k", pa.int64()),
    pa.field("max_new_tokens", pa.int64()), pa.field("stop", pa.list_(pa.string())), pa.field("n", pa.int64()),
    pa.field("seed", pa.int64()), pa.field("backend", pa.string()), pa.field("other", pa.string()),
])
# Skill-SD's summary (annotate.skills.SKILL_KEYS).
SKILL_STRUCT = pa.struct([
    pa.field("success_analysis", pa.string()), pa.field("mistake_analysis", pa.string()),
    pa.field("golden_workflow", pa.string()), pa.field("other", pa.string()),
])
NESTED = {"sampling": SAMPLING_STRUCT, "skill": SKILL_STRUCT}


def _fits(value: Any, t: pa.DataType) -> bool:
    if isinstance(value, bool):
        return False  # JSON true is not a number here
    if pa.types.is_floating(t):
        return isinstance(value, (int, float))
    if pa.types.is_integer(t):
        return isinstance(value, int)
    if pa.types.is_string(t):
        return isinstance(value, str)
    if pa.types.is_list(t):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


def nest_json(values: pa.Array | pa.ChunkedArray, struct: pa.StructType) -> pa.Array:
    """JSON-object strings -> `struct` rows; unknown keys, mistyped values and non-objects go to
    `other` as JSON (a non-JSON string is kept there as is); null stays null."""
    names = {struct.field(i).name: struct.field(i).type for i in range(struct.num_fields)}
    rows: list[dict | None] = []
    for raw in values.to_pylist():
        if raw is None:
            rows.append(None)
            continue
        try:
            d = json.loads(raw)
        except ValueError:
            d = None
        if not isinstance(d, dict):
            rows.append({"other": raw})
            continue
        row: dict[str, Any] = {}
        other = {}
        for k, v in d.items():
            if k != "other" and k in names and (v is None or _fits(v, names[k])):
                row[k] = v
            else:
                other[k] = v
        row["other"] = json.dumps(other, ensure_ascii=False, sort_keys=True) if other else None
        rows.append(row)
    return pa.array(rows, type=struct)


def hf_table(table: pa.Table) -> pa.Table:
    """`table` with its JSON columns (`sampling`, `skill`) nested; other columns unchanged."""
    for name, struct in NESTED.items():
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            i = table.column_names.index(name)
            table = table.set_column(i, pa.field(name, struct), nest_json(table.column(name), struct))
    return table


def dataset_info(store, version: int):
    """A `datasets.DatasetInfo` for `version` of `store`: description (what, where from, lineage)
    and `version` = the store version as ``N.0.0`` (HF wants x.y.z)."""
    import datasets

    infos = [i for i in store.versions() if i.version <= version]
    this = infos[-1]
    tags = f" (tags: {', '.join(this.tags)})" if this.tags else ""
    lineage = "\n".join(json.dumps({"version": i.version, "time": str(i.timestamp), "message": i.message,
                                    "tags": list(i.tags), "rows": i.rows, "lineage": i.lineage},
                                   ensure_ascii=False, sort_keys=True, default=str) for i in infos)
    description = (
        f"spanroute rollouts: version {version}{tags} of store {store.path.resolve()}, {this.rows} rows, "
        f"rollout schema v{SCHEMA_VERSION}. Columns as in spanroute's datastore/schema.py; `sampling` and "
        "`skill` are nested here (JSON strings in the store; keys outside the struct are kept as JSON "
        "in `other`). Span offsets are Unicode code points of `response`, end exclusive.\n"
        f"Lineage, one store version per line, oldest first:\n{lineage}")
    return datasets.DatasetInfo(description=description, version=f"{version}.0.0",
                                dataset_name="spanroute-rollouts")
