"""`verify`: re-check a stored version from its data (not from what the writer promised)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datastore.schema import REQUIRED_COLUMNS, ROLLOUT_SCHEMA
from datastore.validate import span_problem

MAX_LISTED = 50  # problems listed in full; the rest are counted


@dataclass
class VerifyReport:
    """Problems found in one version; ``ok`` when there are none."""

    version: int
    rows: int
    problems: list[str] = field(default_factory=list)
    more: int = 0  # problems found beyond the listed ones

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)
        else:
            self.more += 1

    def summary(self) -> str:
        if self.ok:
            return f"version {self.version}: OK ({self.rows} rows)"
        extra = f" (+{self.more} more)" if self.more else ""
        return f"version {self.version}: {len(self.problems) + self.more} problem(s){extra}"


def verify_table(ds, version: int) -> VerifyReport:
    """Schema, required non-null, unique rollout_id, spans valid for their response, token ids and
    log-probs of equal length, each group_id within one prompt_id and one prompt text."""
    schema = ds.schema
    report = VerifyReport(version=version, rows=ds.count_rows())
    for f in ROLLOUT_SCHEMA:
        if f.name not in schema.names:
            report.add(f"schema: column '{f.name}' missing")
        elif not schema.field(f.name).type.equals(f.type):
            report.add(f"schema: column '{f.name}' is {schema.field(f.name).type}, expected {f.type}")
    if not report.ok:
        return report  # the row checks below assume the declared schema

    cols = ["rollout_id", "prompt_id", "group_id", "prompt", "response", "spans"]
    tbl = ds.to_table(columns=cols)
    ids = tbl.column("rollout_id")
    for c in REQUIRED_COLUMNS:
        col = tbl.column(c) if c in cols else ds.to_table(columns=[c]).column(c)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            report.add(f"row {i}: column '{c}' is required but null ({col.null_count} rows)")

    counts = pc.value_counts(ids)
    dups = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    for rid in dups.to_pylist():
        report.add(f"column 'rollout_id': duplicate {rid!r}")

    spans = tbl.column("spans")
    lengths = pc.fill_null(pc.list_value_length(spans), 0).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(lengths)
    if len(rows):
        sel = pa.array(rows)
        sub_spans = spans.take(sel).to_pylist()
        sub_resp = tbl.column("response").take(sel).to_pylist()
        sub_ids = ids.take(sel).to_pylist()
        for i, sp, resp, rid in zip(rows, sub_spans, sub_resp, sub_ids):
            for j, s in enumerate(sp):
                problem = span_problem(resp, s)
                if problem:
                    report.add(f"row {int(i)} (rollout_id={rid!r}): column 'spans'[{j}]: {problem}")

    for name in ("prompt_id", "prompt"):
        g = tbl.group_by("group_id").aggregate([(name, "count_distinct")])
        bad = pc.filter(g.column("group_id"), pc.greater(g.column(f"{name}_count_distinct"), 1))
        for gid in bad.to_pylist():
            report.add(f"group {gid!r}: rows disagree on '{name}' (a group is G samples of one prompt)")

    offset = 0
    for batch in ds.to_batches(columns=["response_token_ids", "response_logprobs"]):
        a = pc.list_value_length(batch.column(0)).to_numpy(zero_copy_only=False)
        b = pc.list_value_length(batch.column(1)).to_numpy(zero_copy_only=False)
        both = ~(np.isnan(a.astype(float)) | np.isnan(b.astype(float)))
        bad = np.flatnonzero(both & (a != b))
        for i in bad[:MAX_LISTED]:
            report.add(
                f"row {offset + int(i)}: response_token_ids has {int(a[i])} tokens but "
                f"response_logprobs has {int(b[i])}"
            )
        offset += batch.num_rows
    return report
