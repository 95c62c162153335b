"""Shards and the model they train must share a tokenizer (#16 item 2): the manifest's vocabulary
hash is compared with the model's, and a mismatch is one line naming both, before any step."""

from __future__ import annotations

import json
import shutil

import pytest

from datastore import Store
from tests.train_fixtures import make_policy, one_thread, toy_rollouts
from train.cli import main

TRAIN = ["data.groups_per_step=2", "data.micro_batch_size=4", "optim.steps=1", "run.tensorboard=false",
         "run.plot=false"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store of toy rollouts, policy A (toy tokenizer: 751 entries), policy B (another vocabulary, 280 entries),
    A re-saved (same vocabulary, re-written files), and shards built with A."""
    from transformers import AutoTokenizer

    from train.toy import build_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("tok")
    a = make_policy(d / "a")
    b = d / "b"
    tok_b = build_tokenizer(b, vocab_size=280)
    tiny_model(tok_b, layers=1, hidden=32).save_pretrained(b)
    resaved = d / "a-resaved"
    shutil.copytree(a, resaved)
    AutoTokenizer.from_pretrained(a).save_pretrained(resaved)
    Store(d / "store").write(toy_rollouts(a, n_prompts=4, group=2), message="seed")
    assert main(["shards", "build", "--store", str(d / "store"), "--model", str(a), "--out", str(d / "shards")]) == 0
    return d


def _train(world, policy, shards, out):
    return main(["train", "toy_grpo", f"model.path={policy}", f"data.shards={shards}", f"run.out={out}", *TRAIN])


@pytest.mark.parametrize("case, policy, old_manifest, refused", [
    ("same tokenizer", "a", False, False),
    ("same vocabulary, files re-saved", "a-resaved", False, False),
    ("another vocabulary", "b", False, True),
    ("another vocabulary, manifest from before the vocabulary hash", "b", True, True),
])
def test_training_refuses_shards_of_another_tokenizer(world, tmp_path, monkeypatch, capsys, case, policy,
                                                      old_manifest, refused):
    monkeypatch.chdir(tmp_path)
    shards = tmp_path / "shards"
    shutil.copytree(world / "shards", shards)
    if old_manifest:
        m = json.loads((shards / "manifest.json").read_text())
        for k in ("tokenizer_vocab_sha256", "tokenizer_vocab_size", "tokenizer_path"):
            m.pop(k)
        (shards / "manifest.json").write_text(json.dumps(m))
    rc = _train(world, world / policy, shards, tmp_path / "run")
    err = capsys.readouterr().err
    if not refused:
        assert rc == 0, err
        return
    assert rc == 1
    line = err.strip().splitlines()[0]
    print(line)
    assert line.startswith("error: shards ") and "tokenizer" in line
    assert str(world / "b") in " ".join(err.split())  # names the model's tokenizer
    if not old_manifest:
        assert str(world / "a") in line and "(vocab 751," in line and "(vocab 280," in line  # both named
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step taken


def test_manifest_records_the_vocabulary(world):
    m = json.loads((world / "shards" / "manifest.json").read_text())
    assert len(m["tokenizer_vocab_sha256"]) == 64 and m["tokenizer_path"] == str(world / "a")
    assert m["tokenizer_vocab_size"] == 751
