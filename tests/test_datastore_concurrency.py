"""Real processes against one on-disk store: concurrent writers lose nothing, and a writer killed
with SIGKILL leaves the previous version intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from datastore import Store
from tests.datastore_fixtures import make_table

ROOT = Path(__file__).resolve().parents[1]

# Writer A: 50 appends. Writer B: 40 appends, 5 updates and 5 add_columns (the last two race A's
# appends and hit Lance's retryable conflicts). Both start together on an EMPTY store, so the very
# first commit is a create race too.
WORKER = r"""
import sys, time
from pathlib import Path
import pyarrow as pa
from datastore import Store, Lineage
from tests.datastore_fixtures import make_table
store_dir, who, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = Store(store_dir)
while not go.exists():
    time.sleep(0.01)
written = []
for i in range(50):
    if who == "B" and i % 10 == 4 and written:
        ids = written[-1]
        store.update(pa.table({"rollout_id": ids, "error_type": [f"B-{i}"] * len(ids)}),
                     message=f"B-{i}", lineage=Lineage(stage="annotate", annotator=who))
    elif who == "B" and i % 10 == 9:
        store.add_columns(pa.table({"rollout_id": written[0], f"b_col_{i}": [f"v{i}"] * len(written[0])}),
                          message=f"B-{i}", lineage=Lineage(stage="annotate", annotator=who))
    else:
        t = make_table(2, start=i * 2, tag=who)
        store.write(t, message=f"{who}-{i}", lineage=Lineage(stage="generate", model=who))
        written.append(t.column("rollout_id").to_pylist())
"""

KILLED = r"""
import sys, time
from pathlib import Path
import lance
import pyarrow as pa
from datastore import Store
from tests.datastore_fixtures import make_table
store_dir, mode, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = Store(store_dir)
if mode == "create":
    # What a creator killed between writing its data files and its first commit leaves behind.
    lance.fragment.write_fragments(make_table(500), store.uri)
    assert list(Path(store.uri).glob("data/*.lance")), "no orphan data files were written"
    marker.write_text("files written, no manifest")
    time.sleep(600)
elif mode in ("write", "update"):
    # Fault injection: data files are on disk, the commit is about to happen -> stall there.
    def stall(*a, **k):
        marker.write_text("about to commit")
        time.sleep(600)
    lance.LanceDataset.commit = staticmethod(stall)
    if mode == "write":
        store.write(make_table(500, start=1000), message="never")
    else:
        store.update(pa.table({"rollout_id": ["r00001"], "error_type": ["never"]}), message="never")
else:  # mode "loop": write big tables non-stop; killed at an arbitrary point
    i = 0
    while True:
        store.write(make_table(3000, start=10000 + i * 3000), message=f"loop-{i}")
        marker.write_text(str(i))
        i += 1
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_processes_each_commit_50_versions_and_none_is_lost(tmp_path):
    store_dir, go = tmp_path / "store", tmp_path / "go"
    procs = [_spawn(WORKER, store_dir, who, go) for who in ("A", "B")]
    time.sleep(0.5)  # let both import and wait at the barrier
    go.write_text("go")
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()
    store = Store(store_dir)
    infos = store.versions()
    assert store.latest_version() == 100 and [i.version for i in infos] == list(range(1, 101))
    assert sorted(i.message for i in infos) == sorted([f"A-{i}" for i in range(50)] + [f"B-{i}" for i in range(50)])
    t = store.read()
    ids = set(t.column("rollout_id").to_pylist())
    assert {f"A{i:05d}" for i in range(100)} <= ids  # every A write's rows
    b_writes = [i for i in range(50) if i % 10 not in (4, 9)]
    assert {f"B{j:05d}" for i in b_writes for j in (2 * i, 2 * i + 1)} <= ids
    assert len(ids) == t.num_rows == 100 + 2 * len(b_writes)
    rows = {r["rollout_id"]: r for r in t.to_pylist()}
    assert rows["B00006"]["error_type"] == "B-4"  # update of B's write 3 (its rows 6, 7)
    assert rows["B00046"]["error_type"] == "B-24"
    for i in (9, 19, 29, 39, 49):
        assert rows["B00000"][f"b_col_{i}"] == f"v{i}" and rows["A00000"][f"b_col_{i}"] is None
    assert rows["A00099"]["response_token_ids"] == make_table(2, 98, "A").column("response_token_ids").to_pylist()[1]
    assert store.verify().ok


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.time() < deadline, "worker never reached the kill point"
        time.sleep(0.02)


def test_creator_killed_before_its_first_commit_leaves_a_usable_empty_store(tmp_path):
    store = Store(tmp_path / "store")
    marker = tmp_path / "marker"
    p = _spawn(KILLED, store.path, "create", marker)
    _wait_for(marker, p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert store.latest_version() is None and store.versions() == []
    assert store.write(make_table(3), message="first") == 1 and store.read().num_rows == 3


def test_writer_killed_mid_write_leaves_previous_version_intact(tmp_path):
    store = Store(tmp_path / "store")
    store.write(make_table(20), message="v1")
    before = store.read(1)
    for mode in ("write", "update"):
        marker = tmp_path / f"marker-{mode}"
        p = _spawn(KILLED, store.path, mode, marker)
        _wait_for(marker, p)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        assert store.latest_version() == 1
        assert store.read().equals(before)
        assert store.verify().ok
    # the next writer is not blocked by the dead one's leftovers
    assert store.write(make_table(5, start=20), message="after") == 2
    assert store.update(pa.table({"rollout_id": ["r00001"], "error_type": ["fixed"]})) == 3
    assert store.read(1).equals(before) and store.read().num_rows == 25


def test_writer_killed_at_an_arbitrary_point_in_a_write_loop(tmp_path):
    store = Store(tmp_path / "store")
    store.write(make_table(10), message="v1")
    marker = tmp_path / "marker"
    p = _spawn(KILLED, store.path, "loop", marker)
    _wait_for(marker, p)
    time.sleep(0.15)  # somewhere inside a later write: data files, manifest or idle
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    latest = store.latest_version()
    assert latest >= 2
    for v in range(1, latest + 1):  # every committed version reads whole
        assert store.read(v).num_rows == 10 + 3000 * (v - 1)
    assert store.verify().ok
    assert store.write(make_table(2, start=900000), message="after") == latest + 1
