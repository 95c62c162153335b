"""Record the gradients each optimizer step is about to apply, in-process or under torchrun.

`python -m tests.grad_probe OUT.pt train --quiet key=value ...` runs `spanroute train` with a global
optimizer step pre-hook that copies every parameter's gradient (after the all-reduce and the norm
clip, before AdamW reads it) and saves ``list[step] -> list[param] -> full float32 tensor`` to OUT.pt
from rank 0. FSDP2 gradients are sharded DTensors: each rank gathers the full tensor (a collective,
so every rank runs the hook in the same order). The hook only observes; the run is the real one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


def record_gradients(into: list[list[torch.Tensor]]) -> Callable[[], None]:
    """Append each optimizer step's gradients to `into`; returns a function that stops recording."""

    def hook(optimizer, args, kwargs):
        grads = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                g = g.full_tensor() if hasattr(g, "full_tensor") else g
                grads.append(g.detach().float().clone())
        into.append(grads)

    return register_optimizer_step_pre_hook(hook).remove


if __name__ == "__main__":
    from train.cli import main

    steps: list[list[torch.Tensor]] = []
    record_gradients(steps)
    rc = main(sys.argv[2:])
    if rc == 0 and int(os.environ.get("RANK", "0")) == 0:
        torch.save(steps, sys.argv[1])
    sys.exit(rc)
