"""The Ray executor over a real local Ray (`ray.init(num_cpus=2)`, one cluster for the module),
a real on-disk store and the real scripted HTTP server.

- the same api job with --executor local and --executor ray writes identical span columns;
- a Ray job whose driver is SIGKILLed midway, then rerun, ends in the uninterrupted store, and the
  server's log shows no request answered (billed) twice;
- an actor SIGKILLed mid-job is restarted, its batch re-run, and every row is annotated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lance_ray  # noqa: F401 - required by the ray extra: a broken install fails here, never skips
import ray

from datastore import Store  # noqa: E402

from annotate.api import ApiAnnotator  # noqa: E402
from annotate.engine import EngineConfig  # noqa: E402
from annotate.executor import RayConfig, RayExecutor  # noqa: E402
from annotate.job import annotate_store  # noqa: E402
from annotate.pricing import Price  # noqa: E402
from annotate.testing.scripted_server import ScriptedServer, ToyOracle  # noqa: E402
from train.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ray_fixtures import PidReporting, annotated, api_args, make_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ToyOracle(p_malformed=0.04, p_out_of_range=0.04, p_bad_quote=0.04)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for every test here (start-up is the slow part). Workers must import this
    worktree's code, so PYTHONPATH is set before the raylet starts (workers inherit it)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + ([old] if old else []))
    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _answered(srv) -> int:
    return sum(1 for e in list(srv.log) if e.kind == "answered")


def test_local_and_ray_executors_write_identical_span_columns(tmp_path, ray_cluster, capsys):
    make_store(tmp_path / "a", 90, seed=5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with ScriptedServer(responder=CONTENT) as srv:
        assert main(api_args(tmp_path / "a", srv.base_url)) == 0
    with ScriptedServer(responder=CONTENT) as srv:  # a fresh server: the Ray run pays for everything
        assert main(api_args(tmp_path / "b", srv.base_url, "--executor", "ray")) == 0
        assert srv.answered_twice() == []
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert annotated(a) == annotated(b)
    lin = b.versions()[-1].lineage
    assert lin["extra"]["executor"] == "ray" and lin["parent_version"] == 1  # the version the job read
    assert "sent" in lin["extra"]["run"]  # engine totals land in lineage after the job ran
    assert '"sent": ' in capsys.readouterr().out  # the merged engine summary is reported


def test_ray_job_with_driver_killed_midway_then_rerun_equals_uninterrupted(tmp_path, ray_cluster):
    make_store(tmp_path / "a", 120, seed=6)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with ScriptedServer(responder=CONTENT) as srv:
        assert main(api_args(tmp_path / "a", srv.base_url)) == 0
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    args = [sys.executable, "-m", "train.cli", *api_args(tmp_path / "b", "URL", "--executor", "ray",
                                                         "--ray-address", ray_cluster)]
    with ScriptedServer(responder=CONTENT, latency_s=0.05) as srv:
        cmd = [srv.base_url if a == "URL" else a for a in args]
        cmd[cmd.index("--concurrency") + 1] = "2"
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _answered(srv) < 20:
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)  # the driver dies; Ray reaps its actors
        p.wait(timeout=10)
        assert Store(tmp_path / "b").latest_version() == 1  # nothing committed by the killed job
        cmd[cmd.index("--concurrency") + 1] = "8"
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=150)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        assert srv.answered_twice() == []
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.latest_version() == b.latest_version() == 2
    assert annotated(a) == annotated(b)


def test_killing_one_actor_mid_job_loses_nothing(tmp_path, ray_cluster):
    make_store(tmp_path / "a", 96, seed=7)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    pids = tmp_path / "pids"
    pids.mkdir()
    with ScriptedServer(responder=CONTENT) as srv:
        assert main(api_args(tmp_path / "a", srv.base_url)) == 0
    with ScriptedServer(responder=CONTENT, latency_s=0.05) as srv:
        cfg = EngineConfig(base_url=srv.base_url, cache_path=tmp_path / "b" / "_annotate" / "cache.sqlite",
                           concurrency=2, timeout_s=5.0, price=Price(1.0, 2.0), progress=False)
        ann = PidReporting(ApiAnnotator(cfg, "scripted"), str(pids))
        killed: list[int] = []

        def kill_one() -> None:
            deadline = time.time() + 120
            while time.time() < deadline and not (_answered(srv) >= 10 and any(pids.iterdir())):
                time.sleep(0.01)
            pid = int(next(pids.iterdir()).name)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        t = threading.Thread(target=kill_one, daemon=True)
        t.start()
        ex = RayExecutor(RayConfig(batch_size=16, actors=2, progress=False))
        v, results = annotate_store(Store(tmp_path / "b"), ann, executor=ex)
        t.join(timeout=5)
        assert killed, "the job finished before an actor could be killed"
        assert srv.answered_twice() == []
    assert len(results) == 96 and all(r.status in ("ok", "repaired", "failed") for r in results)
    assert annotated(Store(tmp_path / "a")) == annotated(Store(tmp_path / "b"))


def test_rollouts_on_ray_hf_path_equals_local_generate_rollouts(tmp_path, ray_cluster):
    """The CPU stand-in for the GPU `ray.data.llm` path: actors run `generate_rollouts` per batch."""
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.rollouts.hf_generator import HFGenerator
    from train.rollouts.ray_generate import rollouts_on_ray
    from train.toy import build_tokenizer, make_problems, tiny_model, toy_prompt_records

    tok = build_tokenizer()
    ckpt = tmp_path / "tiny"
    tiny_model(tok).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    prompts = toy_prompt_records(make_problems(6, seed=1), tok)
    sampling = Sampling(temperature=1.0, max_new_tokens=12)
    local = generate_rollouts(HFGenerator.from_pretrained(str(ckpt), model_name="tiny"), prompts, n=2,
                              sampling=sampling, seed=3)
    remote = rollouts_on_ray(prompts, checkpoint=str(ckpt), model_name="tiny", n=2, sampling=sampling, seed=3,
                             batch_size=2, actors=1, num_cpus=0.5)
    # Same samples; log-probs equal up to float noise from a different batch composition (padding).
    r_rows, l_rows = remote.to_pylist(), local.to_pylist()
    for r, l in zip(r_rows, l_rows, strict=True):
        assert max(abs(a - b) for a, b in zip(r.pop("response_logprobs"), l.pop("response_logprobs"), strict=True)) < 1e-4
        assert r == l


def test_rollouts_generate_cli_with_ray_executor_writes_the_local_store(tmp_path, ray_cluster):
    """`spanroute rollouts generate --executor ray`: same groups, same ids, same batch versions."""
    from train.toy import build_tokenizer, tiny_model

    tok = build_tokenizer()
    ckpt = tmp_path / "tiny"
    tiny_model(tok).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    args = ["rollouts", "generate", "--model", str(ckpt), "--toy", "5", "-n", "2", "--max-new-tokens", "10",
            "--batch-size", "4", "--seed", "7"]
    assert main(args + ["--store", str(tmp_path / "local")]) == 0
    assert main(args + ["--store", str(tmp_path / "ray"), "--executor", "ray", "--ray-actors", "1"]) == 0
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")
    assert remote.latest_version() == local.latest_version() == 3  # 5 prompts, 2 per batch
    l_rows, r_rows = local.read().to_pylist(), remote.read().to_pylist()
    for r, l in zip(r_rows, l_rows, strict=True):
        assert max(abs(a - b) for a, b in zip(r.pop("response_logprobs"), l.pop("response_logprobs"), strict=True)) < 1e-4
        assert r == l
    assert main(args + ["--store", str(tmp_path / "ray"), "--executor", "ray"]) == 0  # rerun: nothing to do
    assert remote.latest_version() == 3


def test_local_executor_is_the_plain_job_and_cli_refuses_an_address_without_ray(tmp_path, capsys):
    """No Ray needed: `LocalExecutor` gives what `annotate_store` without an executor gives."""
    from annotate.executor import LocalExecutor, make_executor
    from train.toy.rule import RuleAnnotator

    make_store(tmp_path / "a", 24, seed=8)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    annotate_store(Store(tmp_path / "a"), RuleAnnotator())
    annotate_store(Store(tmp_path / "b"), RuleAnnotator(), executor=LocalExecutor())
    assert annotated(Store(tmp_path / "a")) == annotated(Store(tmp_path / "b"))
    with pytest.raises(ValueError, match="--ray-address needs --executor ray"):
        make_executor("local", "127.0.0.1:6379")
    assert main(["annotate", "rule", "--store", str(tmp_path / "a"), "--executor", "spark"]) == 1
    assert "--executor must be local or ray" in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_max_cost_is_one_budget_for_the_whole_job_on_every_executor(tmp_path, request, executor):
    """96 rows in 6 Ray batches of 16: each batch used to get the whole --max-cost (about 5x the
    budget spent); now every batch reserves from one ledger per job."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    budget, conc, actors = 0.006, 2, 2
    st = make_store(tmp_path / "s", 96, seed=9)
    with ScriptedServer(responder=CONTENT) as srv:
        cfg = EngineConfig(base_url=srv.base_url, cache_path=tmp_path / "s" / "_annotate" / "cache.sqlite",
                           concurrency=conc, timeout_s=5.0, price=Price(1.0, 2.0), progress=False,
                           max_cost_usd=budget)
        ann = ApiAnnotator(cfg, "scripted")
        ex = RayExecutor(RayConfig(batch_size=16, actors=actors, progress=False)) if executor == "ray" else None
        _, results = annotate_store(st, ann, executor=ex)
        assert srv.answered_twice() == []
    summary = ex.summary if ex is not None else ann.summary.as_dict()
    spent, biggest = summary["cost_usd"], max(r.cost_usd for r in results)
    full = sum({r.request_hash: r.cost_usd for r in results if r.cost_usd}.values()) / max(1, summary["done"])
    assert summary["stopped"] == "max-cost" and summary["skipped"] > 0
    assert sum(r.status == "skipped" for r in results) > 0
    # what is in flight when the budget is reached may overshoot by its estimate error only
    assert spent <= budget + actors * conc * biggest
    assert summary["done"] * full < 96 * full / 2  # far from the ~5x overspend of a budget per batch


def test_two_engine_runs_of_one_job_share_its_budget(tmp_path):
    from annotate.engine import run_calls

    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"q{i} " * 50}], "max_tokens": 20}
              for i in range(40)]
    with ScriptedServer(responder=lambda body: "x" * 40) as srv:
        cfg = EngineConfig(base_url=srv.base_url, cache_path=tmp_path / "c.sqlite", concurrency=2,
                           price=Price(1.0, 2.0), progress=False, max_cost_usd=0.0009, job_id="job-1")
        first, s1 = run_calls(bodies[:20], cfg)
        second, s2 = run_calls(bodies[20:], cfg)  # another batch of the same job
        other, s3 = run_calls(bodies[20:], EngineConfig(**{**cfg.__dict__, "job_id": "job-2"}))
    assert s1.stopped == s2.stopped == "max-cost"
    assert s1.cost_usd + s2.cost_usd <= 0.0009 + 2 * max(r.cost_usd for r in first.values())
    assert s2.sent < s3.sent  # the second batch saw what the first spent; a new job did not
