"""Annotation throughput: the Ray executor vs the local executor, same job, same run.

The scripted OpenAI-compatible server runs in its own process with a fixed 20 ms latency per
answer (`python -m annotate.testing.scripted_server --latency 0.02`). Each executor annotates a fresh copy
of the same toy store (N rollouts, one request each, fresh request cache so every request is
really sent) with `annotate.job.annotate_store` — read the pinned version, annotate, one commit.
requests/s = requests sent / wall time of the whole job (read + annotate + commit). Ray's cluster
start (`ray.init`, once) is reported apart and not counted; its per-job cost (actor start-up,
Ray Data planning) is counted. On 2 shared cores Ray need not win: the figure shows its overhead.

    python bench/ray.py [--quick] [--rows N] [--concurrency 32] [--actors 2] [--batch-size 256]
Last line: JSON with local_requests_per_s, ray_requests_per_s, ray_over_local, ray_init_s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named ray.py: drop its own folder from the path so `import ray` finds Ray.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pyarrow as pa  # noqa: E402

from annotate.api import ApiAnnotator  # noqa: E402
from annotate.engine import EngineConfig  # noqa: E402
from annotate.executor import RayConfig, RayExecutor  # noqa: E402
from annotate.job import annotate_store  # noqa: E402
from annotate_fixtures import toy_records  # noqa: E402  (toy rollouts, no other package needed)
from datastore import Lineage, Store  # noqa: E402
from datastore.schema import ROLLOUT_SCHEMA  # noqa: E402


def make_store(path: Path, n: int) -> None:
    names = {f.name for f in ROLLOUT_SCHEMA}
    rows = [{k: v for k, v in r.items() if k in names} for r in toy_records(n, seed=11)]
    Store(path).write(pa.Table.from_pylist(rows), message="bench rollouts", lineage=Lineage(stage="generate"))


def run_job(store: Path, url: str, concurrency: int, executor) -> dict:
    cfg = EngineConfig(base_url=url, cache_path=store / "_annotate" / "cache.sqlite", concurrency=concurrency,
                       timeout_s=30, progress=False)
    ann = ApiAnnotator(cfg, "scripted")
    t0 = time.perf_counter()
    _, results = annotate_store(Store(store), ann, executor=executor)
    wall = time.perf_counter() - t0
    summary = executor.summary if executor is not None else ann.summary.as_dict()
    sent = summary["sent"]
    # Identical rows share a request: a later batch may find it answered by another actor (cached).
    assert summary["done"] == sent and summary["failed"] == 0, summary
    return {"rows": len(results), "requests": sent, "wall_s": round(wall, 2), "requests_per_s": round(sent / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller size, < 1 minute")
    p.add_argument("--rows", type=int, default=None, help="rollouts per job (default 3000; --quick 400)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight per engine (local: one engine; ray: one per actor)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latency", type=float, default=0.02)
    a = p.parse_args()
    n = a.rows or (400 if a.quick else 3000)
    load0 = round(os.getloadavg()[0], 2)
    server = subprocess.Popen([sys.executable, "-m", "annotate.testing.scripted_server", "--latency", str(a.latency)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        url = server.stdout.readline().strip().split()[-1]
        make_store(work / "base", n)
        shutil.copytree(work / "base", work / "local")
        shutil.copytree(work / "base", work / "ray")
        local = run_job(work / "local", url, a.concurrency, None)

        import ray

        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning", log_to_driver=False)
        init_s = time.perf_counter() - t0
        ex = RayExecutor(RayConfig(actors=a.actors, batch_size=a.batch_size, progress=False))
        # A second, fresh server: the first one would replay its stored answers by Idempotency-Key.
        server2 = subprocess.Popen([sys.executable, "-m", "annotate.testing.scripted_server", "--latency", str(a.latency)],
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            url2 = server2.stdout.readline().strip().split()[-1]
            rayr = run_job(work / "ray", url2, a.concurrency, ex)
        finally:
            server2.terminate()
            server2.wait(timeout=10)
        ray.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    ratio = rayr["requests_per_s"] / local["requests_per_s"]
    print(f"rows {n}, server latency {a.latency * 1000:.0f} ms, concurrency {a.concurrency} per engine, "
          f"{os.cpu_count()} cpus, load {load0}")
    print(f"{'executor':10} {'requests':>9} {'wall s':>8} {'req/s':>8}")
    print(f"{'local':10} {local['requests']:>9} {local['wall_s']:>8} {local['requests_per_s']:>8}")
    print(f"{'ray':10} {rayr['requests']:>9} {rayr['wall_s']:>8} {rayr['requests_per_s']:>8}   "
          f"({a.actors} actors x {a.concurrency}, batch {a.batch_size}; ray.init {init_s:.1f} s not counted)")
    print(json.dumps({"bench": "ray", "rows": n, "latency_s": a.latency, "concurrency": a.concurrency,
                      "actors": a.actors, "batch_size": a.batch_size, "cpus": os.cpu_count(), "load_avg": load0,
                      "local_requests_per_s": local["requests_per_s"], "ray_requests_per_s": rayr["requests_per_s"],
                      "local_wall_s": local["wall_s"], "ray_wall_s": rayr["wall_s"], "ray_init_s": round(init_s, 1),
                      "ray_over_local": round(ratio, 3)}))


if __name__ == "__main__":
    main()
