"""bench/gpu_check.py runs end to end in its --quick mode on CPU (the full run needs one GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_prints_every_figure():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--quick"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [k for k in fig if k.endswith("_error")], fig
    for k in ("grpo_step_s", "trace_step_s", "trace_time_ratio", "trace_memory_ratio", "scoring_full_s",
              "scoring_gathered_s", "scoring_full_peak_bytes", "fsdp_step_s", "fsdp_peak_bytes"):
        assert fig[k] > 0, k
    assert fig["scoring_max_abs_diff"] <= 1e-4  # gathered scoring = full logits, float32
    assert fig["fsdp_loss_equal"] and fig["fsdp_loss"] == pytest.approx(fig["fsdp_plain_loss"], rel=1e-4)
