"""`annotate self --base-url` against a real `vllm` OpenAI-compatible server on 127.0.0.1 (marker
`vllm`: CI runs it in .venv-vllm through .ci/vllm-cpu). The request carries the annotation JSON
schema as `response_format`; vLLM's structured output makes even a random tiny model answer in that
shape, so every answer that was not cut at --max-tokens parses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from annotate_fixtures import annotated, make_store
from vllm_fixtures import KV_BYTES, vllm_tiny_dir

pytestmark = pytest.mark.vllm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: str, tmp_path_factory, kv_bytes: int = KV_BYTES, max_len: int = 512):
    """Yield the base URL of `vllm`'s OpenAI server for `model` on a free loopback port; stop it after."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "vllm.log", "w+")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
                             "--kv-cache-memory-bytes", str(kv_bytes), "--max-model-len", str(max_len)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:  # until the server answers or exits; no wall-clock threshold
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"vllm server exited {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, model folder) of a served vLLM test model (head size 32)."""
    model = str(vllm_tiny_dir(tmp_path_factory.mktemp("served")))
    for url in serve(model, tmp_path_factory, max_len=8192):
        yield url, model


def test_annotate_self_against_a_served_model_uses_the_json_schema(tmp_path, served, capsys):
    from train.cli import main

    url, model = served
    st = make_store(tmp_path / "s", 4, seed=6)
    args = ["annotate", "self", "--store", str(tmp_path / "s"), "--model", model, "--base-url", url,
            "--served-model-name", model, "--max-tokens", "192", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sent"] > 0
    lin = st.versions()[-1].lineage
    assert lin["extra"]["source"] == "self" and lin["extra"]["checkpoint"] == model
    # `annotation` holds one evidence entry per (source, annotator): this job's is the `self` one
    evidence = [e for r in annotated(st) for e in r["annotation"] or [] if e["source"] == "self"]
    rows = [e for e in evidence if e["raw_response"]]
    # every row has this job's evidence; identical rendered requests are sent once (the cache answers
    # the rest), so requests sent can be fewer than rows
    assert len(rows) == st.read().num_rows and 0 < summary["sent"] <= len(rows)
    whole = 0
    for e in rows:
        raw = json.loads(e["raw_response"])  # the server's whole chat completion
        content = raw["choices"][0]["message"]["content"] if isinstance(raw, dict) and "choices" in raw else raw
        assert content.lstrip().startswith("{"), content[:200]  # the schema's shape, even from a random model
        assert e["parse_status"] in ("ok", "repaired", "failed", "truncated")
        try:
            whole += isinstance(json.loads(content), dict)
        except ValueError:  # cut at --max-tokens (`truncated`): a prefix of the schema's shape
            assert e["parse_status"] == "truncated"
    print(f"served vLLM: {whole}/{len(rows)} answers complete JSON objects")
