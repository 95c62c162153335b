"""One name per meaning across commands, old names as hidden aliases, --version and -h (#16 item 7),
and shipped configs / model shortcuts usable by name from any folder (#16 item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from train.cli import app, main
from train.cli_names import ALIASES, rewrite_aliases

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    """(path, click command) for every leaf command."""
    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer may carry its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, cmd
    yield from walk(typer.main.get_command(app), ())


COMMANDS = dict(_commands())
# option -> the only parameter name it may carry, anywhere: one meaning per name
MEANING = {"-n": {"n", "group_size"}, "--num-generations": {"n", "group_size"}, "--limit": {"limit"},
           "--prompts": {"prompts"}, "--template-dir": {"prompts"}, "-o": {"out", "html_out"},
           "--out": {"out", "html_out"}}
RETIRED = {"--to", "--html", "--tokenizer", "--policy", "--checkpoint", "--group-size", "--output-dir"}


def test_every_option_name_keeps_one_meaning_and_old_names_are_hidden():
    seen = {}
    for path, cmd in COMMANDS.items():
        for p in cmd.params:
            for opt in p.opts + p.secondary_opts:
                assert opt not in RETIRED, f"{' '.join(path)} still declares {opt}"
                if opt in MEANING:
                    assert p.name in MEANING[opt], f"{' '.join(path)}: {opt} means {p.name}"
                    seen.setdefault(opt, []).append(" ".join(path))
    assert sorted(seen["-n"]) == ["eval", "rollouts generate", "train"]  # samples per prompt, nowhere a row limit
    assert sorted(seen["--prompts"]) == ["eval", "rollouts generate"]  # data only (eval reads a prompt source too)
    assert sorted(seen["--out"]) == ["data export", "demo", "shards build", "spans show"]


def test_every_alias_points_at_a_declared_option_of_its_command():
    for path, table in ALIASES.items():
        opts = {o for p in COMMANDS[path].params for o in p.opts}
        for old, new in table.items():
            assert new in opts and old not in opts, (path, old, new)


@pytest.mark.parametrize("argv, expected, notes", [
    (["data", "export", "--store", "s", "--to", "x.jsonl"], ["data", "export", "--store", "s", "--out", "x.jsonl"], 1),
    (["data", "show", "-n", "3"], ["data", "show", "--limit", "3"], 1),
    (["rollouts", "generate", "-n", "3"], ["rollouts", "generate", "-n", "3"], 0),  # -n keeps its meaning here
    (["--debug", "shards", "build", "--tokenizer=toy"], ["--debug", "shards", "build", "--model=toy"], 1),
    (["spans", "show", "--html", "a.html", "--store", "s"], ["spans", "show", "--out", "a.html", "--store", "s"], 1),
    (["annotate", "self", "--checkpoint", "p", "--model", "served"],
     ["annotate", "self", "--model", "p", "--served-model-name", "served"], 2),  # the old pair, as one
    (["annotate", "self", "--model", "p"], ["annotate", "self", "--model", "p"], 0),  # new spelling untouched
    (["annotate", "api", "--prompts", "t/"], ["annotate", "api", "--template-dir", "t/"], 1),
    (["train", "toy_trace", "--group-size", "4"], ["train", "toy_trace", "--num-generations", "4"], 1),
    (["demo", "--policy", "p"], ["demo", "--model", "p"], 1),
    (["data", "import", "x", "--", "--to"], ["data", "import", "x", "--", "--to"], 0),  # not this command's
])
def test_old_names_are_rewritten_with_a_note(argv, expected, notes):
    out, said = rewrite_aliases(argv)
    assert out == expected and len(said) == notes
    assert all("is now" in s for s in said)


def test_version_and_short_help(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("spanroute 0.1.0 (torch ") and "Python 3." in out
    for argv in (["-h"], ["data", "-h"], ["data", "show", "-h"], ["train", "-h"]):
        assert main(argv) == 0
        assert "Usage" in capsys.readouterr().out


def test_old_name_still_works_end_to_end(tmp_path, monkeypatch, capsys):
    from datastore import Store
    from tests.datastore_fixtures import make_table

    monkeypatch.chdir(tmp_path)
    Store("s").write(make_table(3))
    assert main(["data", "export", "--store", "s", "--to", "x.jsonl", "--format", "jsonl"]) == 0
    assert len(Path("x.jsonl").read_text().splitlines()) == 3
    assert "data export --to is now --out" in capsys.readouterr().err


def test_console_script_version_outside_the_repo(tmp_path):
    out = subprocess.run([sys.executable, "-m", "train.cli", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.startswith("spanroute ")


# ------------------------------------------------------------------ item 3: names from any folder


def test_config_names_resolve_from_any_folder(tmp_path, monkeypatch):
    from train.model_names import CONFIG_DIR, resolve_config, resolve_model

    monkeypatch.chdir(tmp_path)
    for name in ("toy_trace", "toy_grpo", "toy_skill_sd", "toy_trace.yaml"):
        assert resolve_config(name) == CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    Path("toy_trace.yaml").write_text("method: {name: grpo}\n")
    assert resolve_config("toy_trace.yaml") == Path("toy_trace.yaml")  # a file here wins
    with pytest.raises(FileNotFoundError, match="shipped: qwen3_1p7b_trace, qwen3_8b_trace_fsdp, toy_grpo"):
        resolve_config("toy_tarce")
    assert (Path(resolve_model("toy")) / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match="^model.path runs/x: not a folder .* or toy or smollm2"):
        resolve_model("runs/x", "model.path")


def test_shipped_configs_point_only_at_things_that_exist_or_get_made():
    import yaml

    from train.model_names import CONFIG_DIR, SHORTCUTS

    for f in CONFIG_DIR.glob("toy_*.yaml"):
        assert yaml.safe_load(f.read_text())["model"]["path"] in SHORTCUTS, f.name


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    from datastore import Store
    from tests.train_fixtures import toy_rollouts
    from train.toy import toy_policy

    d = tmp_path_factory.mktemp("toyflow")
    Store(d / "store").write(toy_rollouts(toy_policy(), n_prompts=4, group=2), message="seed")
    return d / "store"


def test_train_by_config_name_with_model_toy_outside_the_repo(toy_store, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["shards", "build", "--store", str(toy_store), "--tokenizer", "toy", "--out", "shards"]) == 0
    assert main(["train", "toy_grpo", "model.path=toy", "data.shards=shards", "run.out=run", "optim.steps=1",
                 "data.groups_per_step=2", "run.tensorboard=false", "run.plot=false", "--quiet"]) == 0, \
        capsys.readouterr().err
    written = yaml.safe_load(Path("run/config.yaml").read_text())
    assert (Path(written["model"]["path"]) / "config.json").is_file()  # the folder `toy` stands for
    assert (Path("run") / "final" / "config.json").is_file()
