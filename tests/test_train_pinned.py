"""Pinned loss trajectories: each method's first steps on the tiny model, as literal numbers.

Like TRL's invariance tests: a refactor of the loop, the method table or the scoring that changes
any number here fails, so "behaviour unchanged" is checked rather than claimed. The numbers were
first recorded on the loop before the method table existed (commit 7cb4b98 + this file), and the
refactor reproduced them; they were recorded again when the toy tokenizer was retrained for toy
world v2 (the tiny model's vocabulary changed). They must only
change with a deliberate change of a method's objective or of the fixture — then regenerate them with
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
# The loss is a token-mean of terms of size ~|A| ~ 1 that cancel to ~0 at step 0 (ratio 1, centred
# advantages): there its value is float32 round-off (eps 1.2e-7 x term size), so pin it to that, not 1e-10.
# Likewise each KL is a mean of differences of float32 log-probs of size up to ln V ~ 6.6 nats between
# near-identical distributions (~1e-5..1e-3 nats): its round-off is ~eps x 6.6 ~ 8e-7 absolute, and it
# depends on the CPU's kernels (an AVX-512 EPYC moved trace's step-0 forward KL by 1.5e-7, 0.4%,
# every other metric staying within rel 1e-5), so pin KLs to 1e-6 absolute. Their gradient still
# shows in grad_norm, pinned at rel 1e-5.
ABS = {"loss": 2.4e-7, "pg_loss": 2.4e-7, "kl_forward": 1e-6, "kl_reverse": 1e-6, "kl_sampled_k3": 1e-6}
KEYS = ("loss", "pg_loss", "grad_norm", "lambda", "kl_forward", "kl_reverse", "kl_sampled_k3")

# fmt: off
PINNED: dict[str, list[dict[str, float]]] = {
    'grpo': [
        {'loss': -3.261155789857639e-08, 'grad_norm': 0.19481176137924194, 'lambda': 0.0},
        {'loss': -0.002167013008147478, 'grad_norm': 0.1860419362783432, 'lambda': 0.0},
        {'loss': 0.0020509108435362577, 'grad_norm': 0.17876748740673065, 'lambda': 0.0},
        {'loss': -0.0014234057161957026, 'grad_norm': 0.22887642681598663, 'lambda': 0.0},
    ],
    'trace': [
        {'loss': -0.06556314416229725, 'pg_loss': -0.0655736718326807, 'grad_norm': 0.45983555912971497, 'lambda': 0.5, 'kl_forward': 3.62394178713051e-05, 'kl_reverse': 0.00010664176079444587},
        {'loss': -0.09888122603297234, 'pg_loss': -0.09893772006034851, 'grad_norm': 0.47502079606056213, 'lambda': 0.5, 'kl_forward': 0.00029665320180356504, 'kl_reverse': 0.00047237699618563056},
        {'loss': -0.03186978306621313, 'pg_loss': -0.03187594935297966, 'grad_norm': 0.2443448007106781, 'lambda': 0.25, 'kl_forward': 4.136359833258515e-05, 'kl_reverse': 0.00014523558493237943},
        {'loss': 0.0002741776988841593, 'pg_loss': 0.0002741776988841593, 'grad_norm': 0.42128878831863403, 'lambda': 0.0},
    ],
    'trace-fkl': [
        {'loss': 0.09836221486330032, 'pg_loss': 0.09836042858660221, 'grad_norm': 0.36741918325424194, 'lambda': 0.5, 'kl_forward': 3.62394178713051e-05},
        {'loss': 0.08379902876913548, 'pg_loss': 0.08378487452864647, 'grad_norm': 0.33255916833877563, 'lambda': 0.5, 'kl_forward': 0.00031147811096161605},
        {'loss': 0.036333927884697914, 'pg_loss': 0.03633315209299326, 'grad_norm': 0.21168923377990723, 'lambda': 0.25, 'kl_forward': 3.4902996655243136e-05},
        {'loss': -0.00030893675284460187, 'pg_loss': -0.00030893675284460187, 'grad_norm': 0.39033982157707214, 'lambda': 0.0},
    ],
    'trace-rkl': [
        {'loss': -0.1639254130423069, 'pg_loss': -0.1639341525733471, 'grad_norm': 0.3534366190433502, 'lambda': 0.5, 'kl_reverse': 0.00010664176079444587},
        {'loss': -0.19065005704760551, 'pg_loss': -0.19069242477416992, 'grad_norm': 0.43455520272254944, 'lambda': 0.5, 'kl_reverse': 0.000465301179792732},
        {'loss': -0.07310020551085472, 'pg_loss': -0.07310538366436958, 'grad_norm': 0.2562086880207062, 'lambda': 0.25, 'kl_reverse': 0.0001417384686646983},
        {'loss': 0.004337696940638125, 'pg_loss': 0.004337696940638125, 'grad_norm': 0.48972898721694946, 'lambda': 0.0},
    ],
    'opd': [
        {'loss': 3.501150149531895e-05, 'pg_loss': 0.0, 'grad_norm': 0.004391939379274845, 'lambda': 0.5, 'kl_forward': 7.00231557559283e-05},
        {'loss': 0.00022259273828240111, 'pg_loss': 0.0, 'grad_norm': 0.01232538279145956, 'lambda': 0.5, 'kl_forward': 0.00044485289095477624},
        {'loss': -0.000222888575081015, 'pg_loss': -0.00022994082610239275, 'grad_norm': 0.08439016342163086, 'lambda': 0.25, 'kl_forward': 2.817255901046903e-05},
        {'loss': -0.00217803475970868, 'pg_loss': -0.00217803475970868, 'grad_norm': 0.19214607775211334, 'lambda': 0.0},
    ],
    'skill_sd': [
        {'loss': 6.515520567518251e-08, 'pg_loss': -3.261155789857639e-08, 'grad_norm': 0.19481085240840912, 'lambda': 0.001, 'kl_sampled_k3': 9.670462895883247e-05},
        {'loss': -0.0021661754581145942, 'pg_loss': -0.002166980499168858, 'grad_norm': 0.18602848052978516, 'lambda': 0.001, 'kl_sampled_k3': 0.0007994770421646535},
        {'loss': 0.0020508439047262073, 'pg_loss': 0.00205066375201568, 'grad_norm': 0.1787765920162201, 'lambda': 0.001, 'kl_sampled_k3': 0.00019073682415182702},
        {'loss': -0.0014234233531169593, 'pg_loss': -0.0014241727185435593, 'grad_norm': 0.22885937988758087, 'lambda': 0.001, 'kl_sampled_k3': 0.0007479740306735039},
    ],
    'trace-random': [
        {'loss': -0.06556482799351215, 'pg_loss': -0.06557363830506802, 'grad_norm': 0.26434561610221863, 'lambda': 0.5, 'kl_forward': 8.30536203769346e-05, 'kl_reverse': 5.771306314272806e-05},
        {'loss': -0.09259458817541599, 'pg_loss': -0.09263648837804794, 'grad_norm': 0.34798675775527954, 'lambda': 0.5, 'kl_forward': 0.0002725016500335187, 'kl_reverse': 0.00032450174330733716},
        {'loss': -0.02706550620496273, 'pg_loss': -0.027069364674389362, 'grad_norm': 0.502142608165741, 'lambda': 0.25, 'kl_forward': 6.244088338765626e-05, 'kl_reverse': 6.659877253696322e-05},
        {'loss': -0.0001432388526154682, 'pg_loss': -0.0001432388526154682, 'grad_norm': 0.20252196490764618, 'lambda': 0.0},
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
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=ABS.get(k, 1e-10)), f"{arm} step {step} {k}"


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
