"""Annotation engine throughput against the scripted OpenAI-compatible server with 100 ms latency.

The server runs in its own process (`python -m annotate.testing.scripted_server --latency 0.1`); the client
is the real engine (`annotate.engine.run_calls`: openai.AsyncOpenAI on aiohttp, SQLite journal and
cache, adaptive limiter) with a fresh cache, so every request is really sent. Measured in the same
run: the engine at concurrency 64, and a sequential client (the same engine at concurrency 1).
Ideal = concurrency / latency = 640 req/s. Goal: >= 0.85 of ideal.

    python bench/annotate.py [--quick] [--requests N] [--concurrency 64] [--latency 0.1]
Last line: JSON with requests_per_s, ratio_to_ideal, ratio_to_sequential, client_cpu_ms_per_request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate.engine import EngineConfig, run_calls  # noqa: E402


def bodies(n: int, tag: str) -> list[dict]:
    return [{"model": "scripted", "temperature": 0, "max_tokens": 64,
             "messages": [{"role": "user", "content": f"{tag} request {i}: Response, numbered by segment:\n"
                                                     f"[1] {i} + 1 = {i + 1}\n[2] Answer: {i + 1}"}]}
            for i in range(n)]


def measure(url: str, n: int, concurrency: int, tag: str, workdir: Path) -> dict:
    cfg = EngineConfig(base_url=url, cache_path=workdir / f"{tag}.sqlite", concurrency=concurrency,
                       timeout_s=30, progress=False)
    reqs = bodies(n, tag)
    cpu0, t0 = time.process_time(), time.perf_counter()
    _, s = run_calls(reqs, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert s.done == n, s
    return {"requests": n, "wall_s": wall, "requests_per_s": n / wall, "cpu_ms_per_request": 1000 * cpu / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, < 1 minute")
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.1)
    a = p.parse_args()
    n = a.requests or (1500 if a.quick else 6000)
    n_seq = 20 if a.quick else 50
    load0 = round(os.getloadavg()[0], 2)  # other work on the box competes with client and server
    server = subprocess.Popen([sys.executable, "-m", "annotate.testing.scripted_server", "--latency", str(a.latency)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        line = server.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"scripted server did not start: {line!r}")
        url = line.split()[1]
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            measure(url, 64, a.concurrency, "warmup", work)  # imports, connection pool, server JIT-free warm-up
            conc = measure(url, n, a.concurrency, "concurrent", work)
            seq = measure(url, n_seq, 1, "sequential", work)
    finally:
        server.terminate()
        server.wait(timeout=10)
    ideal = a.concurrency / a.latency
    rows = [("engine, concurrency %d" % a.concurrency, conc), ("sequential client", seq)]
    print(f"{'client':<26}{'requests':>9}{'wall s':>9}{'req/s':>10}{'CPU ms/req':>12}")
    for name, r in rows:
        print(f"{name:<26}{r['requests']:>9}{r['wall_s']:>9.2f}{r['requests_per_s']:>10.1f}{r['cpu_ms_per_request']:>12.2f}")
    print(f"ideal {ideal:.0f} req/s (concurrency / latency); server in its own process, both on this "
          f"machine ({os.cpu_count()} CPUs, load average {load0} at start)")
    print(json.dumps({
        "requests_per_s": round(conc["requests_per_s"], 1),
        "ratio_to_ideal": round(conc["requests_per_s"] / ideal, 3),
        "sequential_requests_per_s": round(seq["requests_per_s"], 2),
        "ratio_to_sequential": round(conc["requests_per_s"] / seq["requests_per_s"], 1),
        "client_cpu_ms_per_request": round(conc["cpu_ms_per_request"], 3),
        "concurrency": a.concurrency, "latency_s": a.latency, "requests": n, "quick": a.quick,
        "load_avg_1m_at_start": load0, "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
