"""Every loss in LOSSES against what real batches hold: anything in padding slots, rewards in any dtype.

Masked slots: a padded batch (rows of 5, 3 and 0 real tokens) is filled at every masked position of
every per-token input — and the advantage of the all-padding row — with one value of the table;
the loss, the metrics and the gradients must equal, bit for bit, those with 0.3 there, and be finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.losses import AGG_MODES, LOSSES, call_loss, group_advantages

FILLS = [0.0, -1e9, -3.4e38, float("-inf"), float("inf"), float("nan")]
_MASK_BT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)


def _batch(fill: float) -> dict:
    g = torch.Generator().manual_seed(0)
    B, T = _MASK_BT.shape

    def tok(scale, shift=0.0):
        x = torch.randn(B, T, generator=g) * scale + shift
        return torch.where(_MASK_BT, x, torch.full((), fill))

    adv = torch.randn(B, generator=g)
    adv[2] = fill  # the all-padding row
    span = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)  # also on padding
    return dict(
        logprobs_BT=tok(0.3, -1.0).requires_grad_(), old_logprobs_BT=tok(0.3, -1.0), advantages_B=adv,
        response_mask_BT=_MASK_BT, span_mask_BT=span, span_kl_BT=tok(0.1, 0.2).abs().requires_grad_(),
        token_kl_BT=tok(0.1, 0.2).abs().requires_grad_(), teacher_logprobs_BT=tok(0.3, -1.2),
        kl_coef=0.25, coef=0.1, num_tokens=8, num_seqs=3)


def _run(method: str, agg: str, fill: float):
    b = _batch(fill)
    loss, metrics = call_loss(method, agg=agg, **b)
    loss.backward()
    grads = {k: b[k].grad for k in ("logprobs_BT", "span_kl_BT", "token_kl_BT") if b[k].grad is not None}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize("fill", FILLS, ids=[repr(f) for f in FILLS])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_masked_slots_change_nothing(method, agg, fill):
    want_loss, want_metrics, want_grads = _run(method, agg, 0.3)
    loss, metrics, grads = _run(method, agg, fill)
    assert torch.isfinite(loss) and torch.equal(loss, want_loss)
    assert metrics == want_metrics and all(math.isfinite(v) for v in metrics.values())
    assert grads.keys() == want_grads.keys() and "logprobs_BT" in grads
    for k, gr in grads.items():
        assert torch.isfinite(gr).all(), k
        assert torch.equal(gr, want_grads[k]), k
        assert not gr[~_MASK_BT].any(), f"{k}: gradient on a padding slot"


# rewards 1,0,1,1 | 0,0 | 1,0 in groups a, a, a, a | b, b | c, c. By hand (population std, eps 1e-6):
# a: mean 0.75, std √(3/16) = 0.4330127 → 0.25/0.4330137 = 0.5773489, −0.75/0.4330137 = −1.7320468
# b: all equal → 0;  c: mean 0.5, std 0.5 → ±0.5/0.500001 = ±0.999998
_REWARDS = [1, 0, 1, 1, 0, 0, 1, 0]
_GROUPS = ["a", "a", "a", "a", "b", "b", "c", "c"]
_ADV = [0.5773489, -1.7320468, 0.5773489, 0.5773489, 0.0, 0.0, 0.999998, -0.999998]
REWARD_FORMS = {
    "torch.float32": (torch.tensor(_REWARDS, dtype=torch.float32), torch.float32),
    "torch.float64": (torch.tensor(_REWARDS, dtype=torch.float64), torch.float64),
    "torch.float16": (torch.tensor(_REWARDS, dtype=torch.float16), torch.float32),
    "torch.bfloat16": (torch.tensor(_REWARDS, dtype=torch.bfloat16), torch.float32),
    "torch.int64": (torch.tensor(_REWARDS, dtype=torch.int64), torch.float32),
    "torch.int32": (torch.tensor(_REWARDS, dtype=torch.int32), torch.float32),
    "torch.uint8": (torch.tensor(_REWARDS, dtype=torch.uint8), torch.float32),
    "torch.bool": (torch.tensor(_REWARDS, dtype=torch.bool), torch.float32),
    "numpy.float64": (np.array(_REWARDS, dtype=np.float64), torch.float64),
    "numpy.float32": (np.array(_REWARDS, dtype=np.float32), torch.float32),
    "numpy.int64": (np.array(_REWARDS, dtype=np.int64), torch.float32),
    "numpy.bool_": (np.array(_REWARDS, dtype=bool), torch.float32),
    "list[int]": (list(_REWARDS), torch.float32),
    "list[float]": ([float(r) for r in _REWARDS], torch.float32),
    "list[bool]": ([bool(r) for r in _REWARDS], torch.float32),
}


@pytest.mark.parametrize("form", REWARD_FORMS)
def test_rewards_in_any_real_dtype(form):
    rewards, dtype = REWARD_FORMS[form]
    adv = group_advantages(rewards, _GROUPS)
    assert adv.dtype == dtype
    torch.testing.assert_close(adv.double(), torch.tensor(_ADV, dtype=torch.float64), atol=1e-6, rtol=0)


def test_complex_rewards_are_refused():
    with pytest.raises(TypeError, match="real values"):
        group_advantages(torch.tensor([1 + 1j, 0j]), ["a", "a"])


@pytest.mark.parametrize("form", REWARD_FORMS)
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_loss_takes_advantages_in_any_real_dtype(method, form):
    """Advantages (here the rewards themselves, 3 rows) in each form give the float32 loss."""
    rewards, _ = REWARD_FORMS[form]
    b = _batch(0.0)
    b["response_mask_BT"] = torch.ones(3, 5, dtype=torch.bool)
    want, _ = call_loss(method, **{**b, "advantages_B": torch.tensor(_REWARDS[:3], dtype=torch.float32)})
    got, metrics = call_loss(method, **{**b, "advantages_B": rewards[:3]})
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert all(math.isfinite(v) for v in metrics.values())
