"""Training config checked at load and at start: choices with did-you-mean, a CUDA request on a
CPU torch, `train --help` listing every field, and no stray config.yaml after a failed start.
CLI cases run from a temporary folder, not the repo root."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.config import HELP, _SECTIONS, load_config

ROOT = Path(__file__).resolve().parents[1]

# (override, words the one-line error must hold)
BAD_VALUES = [
    ("run.device=gpu", ["run.device='gpu'", "auto, cpu, cuda"]),
    ("method.teacher_template=refrence", ["method.teacher_template='refrence'", "did you mean 'reference'"]),
    ("method.name=tarce", ["method.name='tarce'", "did you mean 'trace'"]),
    ("method.agg=token_mean", ["did you mean 'token-mean'"]),
    ("method.teacher_sync=copied", ["did you mean 'copy'"]),
    ("model.dtype=bf16", ["float32, bfloat16, float16"]),
    ("run.distributed=fsdp2", ["did you mean 'fsdp'"]),
    ("method.kl_end=5", ["method.kl_end (5) must be >= method.kl_hold (10)"]),
    ("optim.lr=fast", ["optim.lr", "float"]),
]


@pytest.mark.parametrize("override,words", BAD_VALUES)
def test_bad_values_are_refused_at_load(override, words):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_every_field_has_a_meaning():
    fields = {f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}
    assert fields == set(HELP)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "train.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


def test_train_help_lists_every_field_with_its_default(tmp_path):
    p = _cli(tmp_path, "train", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    for key in HELP:
        assert f"{key} = " in text, key
    assert "run.device = auto" in text and "one of: auto | cpu | cuda" in text
    assert "method.teacher_template = auto" in text


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path):
    override, words = BAD_VALUES[0]
    p = _cli(tmp_path, "train", "model.path=nowhere", f"run.out={tmp_path / 'run'}", override)
    assert p.returncode == 1
    first = p.stderr.strip().splitlines()[0]
    for w in words:
        assert w in first, p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a torch without CUDA")
def test_cuda_on_a_cpu_torch_is_refused_before_anything_is_written(tmp_path):
    p = _cli(tmp_path, "train", "run.device=cuda", "model.path=nowhere", f"run.out={tmp_path / 'run'}")
    assert p.returncode == 1
    assert "run.device=cuda but torch" in p.stderr and "sees no CUDA device" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_no_config_yaml(tmp_path):
    """Shards that lack the method's teacher template: refused after the model loads, and the run
    folder is not created."""
    from tests.train_fixtures import make_policy

    policy = make_policy(tmp_path / "policy")
    p = _cli(tmp_path, "train", f"model.path={policy}", f"data.shards={tmp_path / 'noshards'}",
             f"run.out={tmp_path / 'run'}")
    assert p.returncode == 1 and "manifest.json" in p.stderr
    assert not (tmp_path / "run").exists()
