"""One annotation job over a datastore version: read rows, annotate, write a new version.

The main flow, top to bottom: resolve the version -> read the columns annotators need -> the
annotator returns one `RowResult` per row -> spans are merged per (source, annotator) and
validated -> `store.update` writes spans, error_type, annotation (and skill) as a new version
whose lineage names the annotator, the model, the prompt hash and the parent version.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import pyarrow as pa

from annotate.executor import LocalExecutor
from annotate.faults import JobStopped
from annotate.protocol import Annotator, Provenance, RowResult
from datastore.schema import ANNOTATION_TYPE, evidence_entries
from spans import SPANS_TYPE, Span, merge_spans, validate_row

READ_COLUMNS = ["rollout_id", "prompt_id", "group_id", "prompt", "response", "correct", "reference", "skill",
                "spans", "error_type", "annotation"]
GOOD = ("ok", "repaired")  # statuses whose spans are written; failed | truncated | skipped keep the old ones


def resolve_version(store, version=None) -> int:
    """`version` (a number or tag; default: the latest) as a version number; refused for an empty store."""
    v = store.latest_version() if version is None else store.resolve(version)
    if v is None:
        raise ValueError(f"store {store.path} is empty: `spanroute rollouts generate` or `spanroute data import` writes the first one")
    return v


def read_records(store, version=None, limit: int | None = None) -> tuple[int, list[dict]]:
    """(resolved version, rows as dicts) of the columns annotators use."""
    v = resolve_version(store, version)
    rows = store.read(version=v, columns=READ_COLUMNS).to_pylist()
    return v, rows[:limit] if limit else rows


def checked(rec: dict, res: RowResult, max_fraction: float | None = 0.25) -> RowResult:
    """Validate a result's spans (`spans.validate`: in range, text matches, overlaps merged, TRACE's
    cap); a refused span fails the row, never the job; spans the cap drops are noted, and a row
    whose spans are all dropped by the cap fails with that reason."""
    if res.status not in ("ok", "repaired") or not res.spans:
        return res
    row = validate_row(rec["response"], res.spans, rollout_id=rec["rollout_id"], max_fraction=max_fraction)
    kept, dropped = list(row.spans), list(row.dropped)
    if not row.ok:
        return replace(res, spans=[], status="failed", error=str(row.error))
    if not dropped:
        return replace(res, spans=kept)
    note = (f"cap: {len(dropped)} of {len(res.spans)} spans dropped (over {max_fraction:.0%} of the response)")
    error_msg = "; ".join(x for x in (res.error, note) if x)
    if not kept:
        return replace(res, spans=[], status="failed", error=error_msg)
    return replace(res, spans=kept, status="repaired", error=error_msg)


@dataclass(frozen=True)
class AnnotateBatch:
    """The one per-batch function every executor runs: annotate, then validate each row's spans
    (`checked`). Picklable, so Ray actors run exactly this."""

    annotator: Annotator
    check: bool = True

    def __call__(self, records: list[dict]) -> list[RowResult]:
        results = self.annotator.annotate(records)
        return [checked(rec, res) for rec, res in zip(records, results)] if self.check else results


def _map(store, annotator, limit, executor, *, version=None, check=True, group_key=None):
    """(parent version, records, results) of `version`, through `executor` (None: `LocalExecutor`,
    this process)."""
    parent = resolve_version(store, version)
    records, results = (executor or LocalExecutor()).map_rows(
        store, parent, READ_COLUMNS, AnnotateBatch(annotator, check), limit=limit, group_key=group_key)
    return parent, records, results


def merge_evidence(cell, prov: Provenance, res: RowResult) -> list[dict]:
    """The row's `annotation` entries with this annotator's replaced by `res`'s evidence; other
    annotators' entries untouched. A rerun that did not produce spans (failed, truncated) while
    this annotator's entry is good keeps that entry — the row still holds its good spans — and
    records the failure in ``rerun_error``; a skipped rerun (never sent) changes nothing."""
    entries = evidence_entries(cell)
    who = (prov.source, prov.annotator)
    mine = next((e for e in entries if (e.get("source"), e.get("annotator")) == who), None)
    new = {"source": prov.source, "annotator": prov.annotator, **res.evidence(), "rerun_error": None}
    if mine is not None and res.status == "skipped":
        new = mine
    elif mine is not None and res.status not in GOOD and mine.get("parse_status") in GOOD:
        new = {**mine, "rerun_error": f"{res.status}: {res.error}"}
    rest = [e for e in entries if e is not mine]
    return sorted(rest + [new], key=lambda e: (e.get("source") or "", e.get("annotator") or ""))


def update_table(records: list[dict], results: list[RowResult], prov: Provenance,
                 with_skill: bool = False) -> pa.Table:
    """rollout_id + spans, error_type, annotation (+ skill) for `store.update`."""
    ids, spans_col, types, evidence, skills = [], [], [], [], []
    for rec, res in zip(records, results):
        existing = [Span.from_dict(s) for s in (rec.get("spans") or [])]
        if res.status in GOOD:
            merged = merge_spans(existing, res.spans, prov.source, prov.annotator)
            etype = res.error_type
        else:
            merged, etype = existing, rec.get("error_type")
        ids.append(rec["rollout_id"])
        spans_col.append([s.to_dict() for s in merged])
        types.append(etype)
        evidence.append(merge_evidence(rec.get("annotation"), prov, res))
        skills.append(res.skill)
    cols = {
        "rollout_id": pa.array(ids, pa.string()),
        "spans": pa.array(spans_col, SPANS_TYPE),
        "error_type": pa.array(types, pa.string()),
        "annotation": pa.array(evidence, ANNOTATION_TYPE),
    }
    if with_skill:
        cols["skill"] = pa.array(skills, pa.string())
    return pa.table(cols)


def counts(results: list[RowResult]) -> dict[str, int]:
    return dict(Counter(r.status for r in results))


def lineage_for(prov: Provenance, stage: str, parent: int, results: list[RowResult], extra: dict | None = None):
    from datastore import Lineage

    # parent_version arms the store's lost-update guard: if another writer changed these rows
    # after we read `parent`, the update is refused instead of silently overwriting them.
    return Lineage(
        stage=stage, model=prov.model, annotator=prov.annotator, prompt_hash=prov.prompt_hash,
        parent_version=parent,
        extra={"source": prov.source, "rows": len(results),
               "status_counts": counts(results), **prov.extra, **(extra or {})},
    )


def _run_summary(annotator, executor) -> dict | None:
    """Engine totals (usage, cost, stop) once the job ran: merged over Ray batches, or the annotator's own."""
    summary = getattr(executor, "summary", None) or getattr(annotator, "summary", None)
    return summary if isinstance(summary, dict) or summary is None else summary.as_dict()


def _stopped_before_write(summary: dict | None, results: list[RowResult]) -> None:
    """A fatal fault with no row answered: write nothing (a version of skipped rows says nothing)."""
    if summary and summary.get("fatal") and all(r.status == "skipped" for r in results):
        raise JobStopped(f"{summary['fatal']} (nothing was answered; no version written)")


def _stopped_after_write(summary: dict | None, results: list[RowResult], v: int) -> None:
    if summary and summary.get("fatal"):
        n = sum(r.status != "skipped" for r in results)
        raise JobStopped(f"{summary['fatal']} (wrote version {v} with the {n} rows answered before the stop; "
                         "the rerun sends the rest)")


def annotate_store(store, annotator: Annotator, version=None, *, limit: int | None = None,
                   extra: dict | None = None, executor=None) -> tuple[int, list[RowResult]]:
    """Annotate every row of `version` (default latest) and write one new version. Returns
    (new version, results). `executor` (annotate/executor.py) decides where batches run; the
    commit below is the single committer either way.

    Raises `JobStopped` when a fatal fault (`annotate.faults`) stopped the job: after writing the
    rows answered before it, or without writing when none was.

    A store of schema v1 (one evidence struct per row) is first migrated to per-annotator evidence
    (`datastore.migrate.migrate_evidence`: two versions, lineage stage ``migrate``)."""
    from datastore.migrate import migrate_evidence

    migrate_evidence(store)
    parent, records, results = _map(store, annotator, limit, executor, version=version)
    prov = annotator.provenance
    c = counts(results)
    message = (f"annotate {prov.annotator} on v{parent}: "
               + ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
    summary = _run_summary(annotator, executor)
    _stopped_before_write(summary, results)
    run = {"run": summary} if summary else {}
    v = store.update(update_table(records, results, prov), message=message,
                     lineage=lineage_for(prov, "annotate", parent, results, {**run, **(extra or {})}))
    _stopped_after_write(summary, results, v)
    return v, results


def skills_store(store, extractor: Annotator, version=None, *, limit: int | None = None,
                 extra: dict | None = None, executor=None) -> tuple[int, list[RowResult]]:
    """Write the `skill` column of `version` as a new version (spans and evidence untouched).
    With an `executor`, each prompt group goes to one batch."""
    parent, records, results = _map(store, extractor, limit, executor, check=False,
                                    group_key="group_id", version=version)
    prov = extractor.provenance
    table = pa.table({
        "rollout_id": pa.array([r["rollout_id"] for r in records], pa.string()),
        "skill": pa.array([res.skill for res in results], pa.string()),
    })
    c = counts(results)
    message = f"skills {prov.annotator} on v{parent}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
    summary = _run_summary(extractor, executor)
    _stopped_before_write(summary, results)
    v = store.update(table, message=message, lineage=lineage_for(prov, "skills", parent, results, extra))
    _stopped_after_write(summary, results, v)
    return v, results
