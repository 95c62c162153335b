"""The CLI's contract: every group has --help, errors are one line and a non-zero exit."""

import subprocess
import sys

import pytest

from train.cli import app, main

GROUPS = ["data", "spans", "rollouts", "annotate", "skills", "ls", "shards"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_help(group, capsys):
    assert main([group, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_error_is_one_line_without_traceback_and_secrets_redacted(monkeypatch, capsys):
    monkeypatch.setenv("SPANROUTE_TEST_API_KEY", "sk-planted-secret-123456")

    @app.command("_boom", hidden=True)
    def _boom() -> None:
        raise ValueError("bad thing with sk-planted-secret-123456 inside")

    try:
        assert main(["_boom"]) == 1
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "_boom"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "bad thing with *** inside" in err
    assert "sk-planted" not in err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "train.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "spanroute" in out.stdout
