"""Where annotation batches run: in this process (`LocalExecutor`) or on a Ray cluster (`RayExecutor`).

An executor only decides *where* the one per-batch function runs (`job.annotate_batch`: the
annotator plus span validation); it never annotates itself. Both read one pinned store version,
return ``(records, results)`` in the version's row order, and leave the commit to the caller
(the single committer: `store.update`, which retries retryable Lance commit conflicts).

The guarantees come from the request cache + in-flight journal (`journal.py`, SQLite in
``<store>/_annotate/cache.sqlite``), which every Ray worker on this node reaches: a batch re-run
after a killed actor or a killed driver serves finished requests from the cache and re-sends
in-flight ones with their Idempotency-Key. See README "Scaling out with Ray" for several nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from annotate.progress import RunBar
from annotate.protocol import RowResult
from spans.model import Span

BatchFn = Callable[[list[dict]], list[RowResult]]  # picklable: records -> one result per record


class Executor(Protocol):
    """Runs `fn` over every row of a pinned store version, in batches."""

    name: str

    def map_rows(self, store, version: int, columns: list[str], fn: BatchFn, *,
                 limit: int | None = None, group_key: str | None = None) -> tuple[list[dict], list[RowResult]]:
        """(records, results) in the version's row order. With `group_key`, all rows sharing that
        key's value go to `fn` in one call (skills are per prompt group)."""
        ...


@dataclass(frozen=True)
class LocalExecutor:
    """One call of `fn` over all rows, in this process (the engine inside brings its own concurrency)."""

    name: str = "local"

    def map_rows(self, store, version, columns, fn, *, limit=None, group_key=None):
        records = store.read(version=version, columns=columns).to_pylist()
        records = records[:limit] if limit else records
        return records, fn(records)


# --- Ray ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RayConfig:
    """How the Ray executor spreads batches.

    `num_cpus` per actor is fractional for HTTP annotators: a whole CPU per actor starves the Lance
    reader on a small cluster and the job hangs (measured on 2 cores); use 1 for CPU-bound
    annotators (rule, in-process generation). `batch_size` rows go to one `fn` call.
    """

    address: str | None = None  # None: join the running Ray of this process, else start a local one
    actors: int = 2  # most actors in the pool
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    batch_size: int = 64
    progress: bool = True
    label: str = "annotate (ray)"


def result_to_json(res: RowResult) -> str:
    return json.dumps(asdict(res), ensure_ascii=False)


def result_from_json(text: str) -> RowResult:
    d = json.loads(text)
    d["spans"] = [Span.from_dict(s) for s in d["spans"]]
    return RowResult(**d)


class _BatchWorker:
    """The actor: runs `fn` on a batch and ships back only what the driver lacks: each row's result
    (JSON), keyed by the row's ``rollout_id``, and the engine's run summary. The records themselves
    never travel back: the driver reads them from the same pinned version, as the local executor does."""

    def __init__(self, fn: BatchFn):
        self.fn = fn

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        for r in records:
            r.pop("_group", None)
        results = self.fn(records) if records else []  # a filtered block can be empty
        summary = _summary_of(self.fn) if records else None
        return pa.table({
            "_id": pa.array([r["rollout_id"] for r in records], pa.string()),
            "_res": pa.array([result_to_json(x) for x in results], pa.string()),
            "_summary": pa.array(([json.dumps(summary) if summary else None] + [None] * (len(records) - 1))[: len(records)],
                                 pa.string()),
        })


def _summary_of(fn) -> dict | None:
    """The engine `Summary` of the batch just run, when the annotator keeps one (api/self)."""
    ann = getattr(fn, "annotator", None)
    for obj in (ann, getattr(ann, "api", None)):
        s = getattr(obj, "summary", None)
        if s is not None and hasattr(s, "as_dict"):
            return s.as_dict()
    return None


SUMMED = ("requests", "cached", "sent", "done", "failed", "skipped", "retries", "rate_limited",
          "resent_after_crash", "prompt_tokens", "completion_tokens", "cost_usd")


def merge_summaries(parts: list[dict]) -> dict | None:
    """Sum the per-batch engine summaries into one run summary (``stopped`` if any batch stopped)."""
    if not parts:
        return None
    out = {k: sum(p.get(k) or 0 for p in parts) for k in SUMMED}
    # a fatal fault outranks a budget stop: it is what the user must fix
    out["stopped"] = next((p["stopped"] for p in parts if p.get("stopped") == "fatal"), None) or next(
        (p["stopped"] for p in parts if p.get("stopped")), None)
    out["fatal"] = next((p["fatal"] for p in parts if p.get("fatal")), None)
    out["elapsed_s"] = max(p.get("elapsed_s") or 0.0 for p in parts)
    return out


def ensure_ray(address: str | None):
    """Import Ray and connect: an existing session in this process wins; else `address` (a cluster
    such as ``ray://head:10001`` or ``127.0.0.1:6379``), else a local one-node Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", configure_logging=True)
    return ray


@dataclass
class RayExecutor:
    """Ray Data over the Lance store: ``read_lance(uri, version=pinned)`` -> ``map_batches`` on an
    actor pool -> results streamed back to the driver, which commits once."""

    config: RayConfig = RayConfig()
    name: str = "ray"
    summary: dict | None = None  # merged engine summary of the last run (api/self annotators)

    def map_rows(self, store, version, columns, fn, *, limit=None, group_key=None):
        ray = ensure_ray(self.config.address)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the rich bar below shows rows/s, cost and failures
        ctx.print_on_execution_start = False
        ds = ray.data.read_lance(store.uri, version=version, columns=columns)
        # The records as LocalExecutor reads them; results are put back at their rows' positions.
        table = store.read(version=version, columns=columns)
        records = (table.slice(0, int(limit)) if limit else table).to_pylist()
        ids = [r["rollout_id"] for r in records]
        if limit:
            ds = ds.map_batches(_first_rows, fn_kwargs={"keep": set(ids)}, batch_format="pyarrow", zero_copy_batch=True)
        position = {rid: i for i, rid in enumerate(ids)}
        n_total = len(ids)
        strategy = ray.data.ActorPoolStrategy(min_size=1, max_size=self.config.actors)
        remote = dict(num_cpus=self.config.num_cpus, num_gpus=self.config.num_gpus or None)
        if group_key:
            ds = ds.map_batches(_add_group, fn_kwargs={"key": group_key}, batch_format="pyarrow", zero_copy_batch=True)
            out = ds.groupby("_group").map_groups(_BatchWorker, fn_constructor_args=(fn,), batch_format="pyarrow",
                                                  compute=strategy, **remote)
        else:
            out = ds.map_batches(_BatchWorker, fn_constructor_args=(fn,), batch_size=self.config.batch_size,
                                 batch_format="pyarrow", compute=strategy, **remote)
        rows: list[tuple[int, RowResult]] = []
        summaries: list[dict] = []
        with _RowBar(self.config, n_total) as bar:
            for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
                part = [(position[rid], result_from_json(x)) for rid, x in
                        zip(batch["_id"].to_pylist(), batch["_res"].to_pylist())]
                summaries += [json.loads(s) for s in batch["_summary"].to_pylist() if s]
                rows += part
                bar.advance([x for _, x in part])
        rows.sort(key=lambda t: t[0])
        if len({i for i, _ in rows}) != len(rows) or len(rows) != n_total:
            raise RuntimeError(f"ray executor: {len(rows)} results for {n_total} rows of version {version} "
                               f"of {store.uri} (a batch was lost or duplicated)")
        self.summary = merge_summaries(summaries)
        return records, [x for _, x in rows]


def _first_rows(batch, keep):
    """Only rows whose rollout_id is in `keep` (the first --limit rows of the version)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch["rollout_id"], value_set=pa.array(sorted(keep), pa.string())))


def _add_group(batch, key):
    import pyarrow as pa

    rows = batch.select([c for c in (key, "prompt_id", "rollout_id") if c in batch.column_names]).to_pylist()
    groups = [r.get(key) or r.get("prompt_id") or r["rollout_id"] for r in rows]
    return batch.append_column("_group", pa.array(groups, pa.string()))


class _RowBar:
    """The run bar over rows as Ray batches come back: rows/s, cost (as recorded on the rows), failed rows."""

    def __init__(self, config: RayConfig, total: int):
        self.t0 = time.perf_counter()
        self.done = self.failed = 0
        self.cost = 0.0
        self.bar = RunBar(config.label, total, {"cost": ("green", "$0.0000"), "failed": ("red", "0 failed")},
                          enabled=config.progress)

    def __enter__(self):
        self.bar.start()
        return self

    def advance(self, results: list[RowResult]) -> None:
        self.done += len(results)
        self.failed += sum(1 for r in results if r.status == "failed")
        self.cost += sum(r.cost_usd for r in results)
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(len(results), rate=f"{rate:.1f} rows/s", cost=f"${self.cost:.4f}",
                        failed=f"{self.failed} failed")

    def __exit__(self, *exc):
        self.bar.stop()


def make_executor(name: str, address: str | None = None, **ray_kwargs) -> Executor:
    """``local`` or ``ray`` (the CLI's ``--executor``); `ray_kwargs` go to `RayConfig`."""
    if name == "local":
        if address:
            raise ValueError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(RayConfig(address=address, **ray_kwargs))
    raise ValueError(f"--executor must be local or ray, not {name!r}")
