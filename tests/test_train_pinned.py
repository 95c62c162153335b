"""Pinned loss trajectories: each method's first steps on the tiny model, as literal numbers.

Like TRL's invariance tests: a refactor of the loop, the method table or the scoring that changes
any number here fails, so "behaviour unchanged" is checked rather than claimed. The numbers were
recorded on the loop before the method table existed (commit 7cb4b98 + this file; `trace-random`,
which is new, right after) and must only
change with a deliberate change of a method's objective — then regenerate them with
``python -m tests.test_train_pinned`` and say why in the commit.

Setup: `tests.train_fixtures` (2-layer, 32-wide random tiny model, 6 prompts × 4 rollouts), 2 groups
per step, micro-batches of 3, lr 1e-3, 4 steps, λ schedule w0 = 0.5 held 1 step, 0 at step 3
(so λ = 0.5, 0.25, 0, 0), copied teacher refreshed every 2 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_fixtures import build_toy_shards, one_thread, overrides

COMMON = ("optim.steps=4", "method.kl_hold=1", "method.kl_end=3", "method.sync_every=2")
ARMS: dict[str, tuple[str, ...]] = {
    "grpo": ("method.name=grpo",),
    "trace": ("method.name=trace", "method.key_channel=true", "method.error_channel=true"),
    "trace-fkl": ("method.name=trace", "method.key_channel=true", "method.error_channel=false"),
    "trace-rkl": ("method.name=trace", "method.key_channel=false", "method.error_channel=true"),
    "opd": ("method.name=opd",),
    "skill_sd": ("method.name=skill_sd", "method.teacher_template=skill"),
    "trace-random": ("method.name=trace-random",),
}
# Rows of the method table that must reproduce a pinned arm exactly (named variants, aliases,
# the `auto` teacher template).
SAME_AS = {"trace-fkl": ("method.name=trace-fkl",), "trace-rkl": ("method.name=trace-rkl",),
           "skill_sd": ("method.name=skill-sd", "method.teacher_template=auto")}
KEYS = ("loss", "pg_loss", "grad_norm", "lambda", "kl_forward", "kl_reverse", "kl_sampled_k3")

# fmt: off
PINNED: dict[str, list[dict[str, float]]] = {
    'grpo': [
        {'loss': 1.2458347908861356e-08, 'grad_norm': 0.1839255541563034, 'lambda': 0.0},
        {'loss': -0.0020864210091531277, 'grad_norm': 0.18337352573871613, 'lambda': 0.0},
        {'loss': 0.0031815890106372535, 'grad_norm': 0.14851544797420502, 'lambda': 0.0},
        {'loss': -0.0002810170699376613, 'grad_norm': 0.19213372468948364, 'lambda': 0.0},
    ],
    'trace': [
        {'loss': -0.06555399484932423, 'pg_loss': -0.06557364203035831, 'grad_norm': 0.42843952775001526, 'lambda': 0.5, 'kl_forward': 6.283545614375423e-05, 'kl_reverse': 0.0002029896160820499},
        {'loss': -0.10194043628871441, 'pg_loss': -0.1019979938864708, 'grad_norm': 0.5251470804214478, 'lambda': 0.5, 'kl_forward': 0.00025793996173888444, 'kl_reverse': 0.0005029723048210144},
        {'loss': -0.031850654631853104, 'pg_loss': -0.031869509257376194, 'grad_norm': 0.22619149088859558, 'lambda': 0.25, 'kl_forward': 0.00014073003937179843, 'kl_reverse': 0.0004192195017822087},
        {'loss': 0.007133235456421971, 'pg_loss': 0.007133235456421971, 'grad_norm': 0.577257513999939, 'lambda': 0.0},
    ],
    'trace-fkl': [
        {'loss': 0.09836354479193687, 'pg_loss': 0.09836045652627945, 'grad_norm': 0.3264654576778412, 'lambda': 0.5, 'kl_forward': 6.283545614375423e-05},
        {'loss': 0.08340930379927158, 'pg_loss': 0.08339067548513412, 'grad_norm': 0.344119668006897, 'lambda': 0.5, 'kl_forward': 0.00040887260111048817},
        {'loss': 0.038239759393036366, 'pg_loss': 0.03823651093989611, 'grad_norm': 0.18023456633090973, 'lambda': 0.25, 'kl_forward': 0.00015057077689561993},
        {'loss': 0.00307934993179515, 'pg_loss': 0.00307934993179515, 'grad_norm': 0.24906039237976074, 'lambda': 0.0},
    ],
    'trace-rkl': [
        {'loss': -0.16391752660274506, 'pg_loss': -0.16393408551812172, 'grad_norm': 0.3468439280986786, 'lambda': 0.5, 'kl_reverse': 0.0002029896160820499},
        {'loss': -0.19129787757992744, 'pg_loss': -0.1913427747786045, 'grad_norm': 0.46397069096565247, 'lambda': 0.5, 'kl_reverse': 0.000493293663021177},
        {'loss': -0.0718255415558815, 'pg_loss': -0.07183860801160336, 'grad_norm': 0.21635660529136658, 'lambda': 0.25, 'kl_reverse': 0.00034634380135685207},
        {'loss': 0.007388056721538305, 'pg_loss': 0.007388056721538305, 'grad_norm': 0.6211480498313904, 'lambda': 0.0},
    ],
    'opd': [
        {'loss': 6.389339796442073e-05, 'pg_loss': 0.0, 'grad_norm': 0.004665060434490442, 'lambda': 0.5, 'kl_forward': 0.00012822089274032195},
        {'loss': 0.00016810503075248562, 'pg_loss': 0.0, 'grad_norm': 0.010990062728524208, 'lambda': 0.5, 'kl_forward': 0.000336598985913125},
        {'loss': -0.00012596227679750882, 'pg_loss': -0.00014225413542590104, 'grad_norm': 0.07244955748319626, 'lambda': 0.25, 'kl_forward': 6.327027694095631e-05},
        {'loss': -0.0013712106156162918, 'pg_loss': -0.0013712106156162918, 'grad_norm': 0.183272585272789, 'lambda': 0.0},
    ],
    'skill_sd': [
        {'loss': 1.7120359530053975e-07, 'pg_loss': 1.2458347908861356e-08, 'grad_norm': 0.18392658233642578, 'lambda': 0.001, 'kl_sampled_k3': 0.00015793960119481198},
        {'loss': -0.0020856334595009685, 'pg_loss': -0.002086542430333793, 'grad_norm': 0.1833774298429489, 'lambda': 0.001, 'kl_sampled_k3': 0.0009135300788329914},
        {'loss': 0.0031812608358450234, 'pg_loss': 0.0031807301566004753, 'grad_norm': 0.14850978553295135, 'lambda': 0.001, 'kl_sampled_k3': 0.0005255553696770221},
        {'loss': -0.00028040900360792875, 'pg_loss': -0.00028160345391370356, 'grad_norm': 0.19211798906326294, 'lambda': 0.001, 'kl_sampled_k3': 0.0011849845759570599},
    ],
    'trace-random': [
        {'loss': -0.06555695831775665, 'pg_loss': -0.06557363644242287, 'grad_norm': 0.2791251540184021, 'lambda': 0.5, 'kl_forward': 0.00014151216115957746, 'kl_reverse': 0.0001194385637063533},
        {'loss': -0.09341478534042835, 'pg_loss': -0.09348876401782036, 'grad_norm': 0.3769615590572357, 'lambda': 0.5, 'kl_forward': 0.0004979229997843504, 'kl_reverse': 0.0005634424858726561},
        {'loss': -0.027196661569178104, 'pg_loss': -0.02720894990488887, 'grad_norm': 0.16963116824626923, 'lambda': 0.25, 'kl_forward': 0.00018974538640274355, 'kl_reverse': 0.00021575388382188976},
        {'loss': 0.0005719818582292646, 'pg_loss': 0.0005719818582292646, 'grad_norm': 0.1980278044939041, 'lambda': 0.0},
    ],
}
# fmt: on


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_shards(tmp_path_factory.mktemp("pinned"))


def trajectory(policy: Path, shards: Path, out: Path, arm: str, extra: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """The pinned metrics of each step of `arm` (absent keys: the channel was off that step)."""
    from train.config import load_config
    from train.recipe import train

    cfg = load_config(None, overrides(policy, shards, out, *COMMON, *(extra or ARMS[arm])))
    train(cfg, log=lambda s: None)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in KEYS if k in r} for r in rows]


@pytest.mark.parametrize("arm", list(ARMS))
def test_loss_trajectory_is_pinned(toy, tmp_path, arm):
    policy, shards = toy
    _check(trajectory(policy, shards, tmp_path / arm, arm), PINNED[arm], arm)


@pytest.mark.parametrize("arm", list(SAME_AS))
def test_named_variants_reproduce_their_pinned_arm(toy, tmp_path, arm):
    policy, shards = toy
    _check(trajectory(policy, shards, tmp_path / arm, arm, SAME_AS[arm]), PINNED[arm], " ".join(SAME_AS[arm]))


def _check(got: list[dict[str, float]], want: list[dict[str, float]], arm: str) -> None:
    assert [sorted(g) for g in got] == [sorted(w) for w in want], "a KL channel switched on or off"
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-10), f"{arm} step {step} {k}"


if __name__ == "__main__":  # regenerate: python -m tests.test_train_pinned
    import tempfile

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        policy, shards = build_toy_shards(Path(d) / "toy")
        print("PINNED: dict[str, list[dict[str, float]]] = {")
        for arm in ARMS:
            rows = trajectory(policy, shards, Path(d) / arm, arm)
            print(f"    {arm!r}: [")
            for r in rows:
                print("        {" + ", ".join(f"{k!r}: {v!r}" for k, v in r.items()) + "},")
            print("    ],")
        print("}")
