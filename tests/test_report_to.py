"""`run.report_to: [tensorboard, wandb]` (#16 item 9): parsed like HF's report_to, W&B optional and
offline by default, a clear one-line error when asked for but not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.train_fixtures import build_toy_shards, one_thread
from train.config import load_config
from train.cli import main

FAST = ["data.groups_per_step=2", "data.micro_batch_size=4", "optim.steps=2", "run.plot=false", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_shards(tmp_path_factory.mktemp("toy"), n_prompts=4, group=2)


@pytest.mark.parametrize("override, expected", [
    (None, ("tensorboard",)),
    ("run.report_to=[tensorboard,wandb]", ("tensorboard", "wandb")),
    ("run.report_to=wandb", ("wandb",)),
    ("run.report_to=none", ("none",)),
    ("run.report_to=[]", ()),
    ("run.report_to=[mlflow]", "run.report_to: unknown mlflow; choose from tensorboard, wandb"),
])
def test_report_to_parses_like_hf(override, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            load_config(None, [override])
        return
    assert load_config(None, [override] if override else []).run.report_to == expected


def test_wandb_asked_but_not_installed_is_one_line_and_writes_nothing(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # the injected fault: the package is absent
    policy, shards = toy
    rc = main(["train", "toy_grpo", f"model.path={policy}", f"data.shards={shards}", "run.out=run",
               "run.report_to=[tensorboard,wandb]", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[0] == ("error: run.report_to has wandb but the wandb package is not installed: pip install wandb "
                      "(or spanroute[wandb]), or drop wandb from run.report_to")
    assert not Path("run").exists()


def test_wandb_logs_offline_without_an_account(toy, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # optional dependency (the `test` extra installs it, so CI runs this)
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    policy, shards = toy
    assert main(["train", "toy_grpo", f"model.path={policy}", f"data.shards={shards}", "run.out=run",
                 "run.report_to=[wandb]", *FAST]) == 0
    assert not Path("run/tb").exists()  # tensorboard not asked for
    [run_dir] = Path("run/wandb").glob("offline-run-*")  # offline: nothing sent, `wandb sync` later
    [log] = run_dir.glob("run-spanroute-*.wandb")  # the run id comes from run.out (a resume continues it)
    data = log.read_bytes()
    assert b"train/loss" in data and b"train/reward" in data  # per-step metrics logged
    assert b"report_to" in data  # with the resolved config
