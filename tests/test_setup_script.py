""".ci/install-torch picks the torch build that fits the machine (#16 item 1): the CPU index when
there is no NVIDIA GPU, the default index's (CUDA) build when there is one, and it falls back to
pip's default index when the CPU index does not serve it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "install-torch"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _fake_nvidia_smi(bin_dir: Path, gpu: bool) -> None:
    """An nvidia-smi on PATH that lists a GPU, or fails as it does on a machine without a driver."""
    bin_dir.mkdir(exist_ok=True)
    body = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"' if gpu else 'echo "NVIDIA-SMI has failed" >&2; exit 9'
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)


@pytest.mark.parametrize("gpu, index_flag", [(False, f"--index-url {CPU_INDEX}"), (True, None)])
def test_build_follows_the_machine(tmp_path, gpu, index_flag):
    if not gpu and Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver loaded: the no-GPU case cannot be staged here")
    _fake_nvidia_smi(tmp_path / "bin", gpu)
    env = {**os.environ, "DRY_RUN": "1", "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("SPANROUTE_TORCH_INDEX", None)
    out = subprocess.run(["bash", str(SCRIPT), sys.executable], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    pip_lines = [ln for ln in out.splitlines() if ln.startswith("pip install")]
    assert pip_lines[0].startswith("pip install torch==2.13.0")
    if index_flag:
        assert index_flag in pip_lines[0] and "no NVIDIA GPU" in out
    else:
        assert "--index-url" not in pip_lines[0] and "NVIDIA GPU found" in out


@pytest.mark.slow
def test_fallback_installs_the_cpu_build_on_this_machine(tmp_path):
    """A fresh venv; the CPU index made to fail (the only injected fault: a wrapper around the
    venv's python refuses that pip call), so the real fallback through pip's own configuration runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *whl/cpu*) echo "injected: index unreachable" >&2; exit 1;; esac\n'
                       f'exec {venv / "bin" / "python"} "$@"\n')
    wrapper.chmod(0o755)
    _fake_nvidia_smi(tmp_path / "bin", gpu=False)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("SPANROUTE_TORCH_INDEX", None)
    run = subprocess.run(["bash", str(SCRIPT), str(wrapper)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "did not serve it: trying pip's default index" in run.stdout
    assert "installed torch 2.13.0" in run.stdout and "(CPU only)" in run.stdout
    dists = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                           capture_output=True, text=True, check=True).stdout
    assert not [d for d in dists.splitlines() if d.lower().startswith("nvidia-")]  # no CUDA libraries
    again = subprocess.run(["bash", str(SCRIPT), str(wrapper)], env=env, capture_output=True, text=True, check=True)
    assert again.stdout.startswith("torch 2.13.0") and "already installed" in again.stdout  # a rerun only checks
