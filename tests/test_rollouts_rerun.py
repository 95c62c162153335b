"""`rollouts generate` reruns are idempotent (issue 16, item 5): a finished tagged run reruns as a
no-op (exit 0, nothing written), a tag taken by another run is refused before any sampling, and
Ctrl-C (a KeyboardInterrupt injected into the second batch) says how to resume; the resumed store
equals an uninterrupted run's."""

from __future__ import annotations

import pytest

from datastore import Store
from train.cli import main
from train.toy import build_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _args(model_dir, store, *extra):
    return ["rollouts", "generate", "--model", str(model_dir), "--toy", "6", "--store", str(store), "-n", "2",
            "--max-new-tokens", "6", "--batch-size", "4", "--seed", "1", *extra]


def _rows(store):
    t = Store(store).read()
    return sorted(zip(t["rollout_id"].to_pylist(), t["response"].to_pylist()))


def test_rerun_of_a_finished_tagged_run_is_a_noop(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s"
    assert main(_args(model_dir, store, "--tag", "gen-x")) == 0
    s = Store(store)
    before, tags = s.latest_version(), s.tags()
    assert main(_args(model_dir, store, "--tag", "gen-x")) == 0
    assert s.latest_version() == before and s.tags() == tags
    assert "nothing to do" in capsys.readouterr().err
    # the same tag on a run with work to do is refused before sampling, and writes nothing
    assert main(_args(model_dir, store, "--tag", "gen-x", "--toy-seed", "9")) == 1
    assert "tag 'gen-x' already exists" in capsys.readouterr().err
    assert s.latest_version() == before


def test_ctrl_c_says_rerun_to_resume_and_the_rerun_completes(tmp_path, model_dir, capsys, monkeypatch):
    import train.rollouts.generate

    ref = tmp_path / "ref"
    assert main(_args(model_dir, ref, "--tag", "gen-x")) == 0
    real, calls = train.rollouts.generate.generate_rollouts, []

    def interrupted(*a, **k):  # fault injection: Ctrl-C during the second batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    store = tmp_path / "s"
    monkeypatch.setattr(train.rollouts.generate, "generate_rollouts", interrupted)
    assert main(_args(model_dir, store, "--tag", "gen-x")) == 130
    err = capsys.readouterr().err
    assert "interrupted: 2 groups written by this run" in err and "rerun the same command to resume" in err
    assert len(_rows(store)) == 4 and "gen-x" not in Store(store).tags()
    monkeypatch.setattr(train.rollouts.generate, "generate_rollouts", real)
    assert main(_args(model_dir, store, "--tag", "gen-x")) == 0
    assert _rows(store) == _rows(ref)
    assert Store(store).tags()["gen-x"]["version"] == Store(store).latest_version()
