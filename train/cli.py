"""The `spanroute` command: one typer app whose groups live next to the code they drive.

Each group's module imports heavy libraries (torch, transformers, lance) inside its commands, so
`spanroute --help` stays fast. Errors print as one line and exit non-zero; `--debug` shows the
traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers' per-load "Loading weights" bars drown our own progress bars in long jobs
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from annotate.cli import annotate_app, skills_app  # noqa: E402
from annotate.labelstudio.cli import app as ls_app  # noqa: E402
from annotate.secrets import redact  # noqa: E402
from datastore.cli import app as data_app  # noqa: E402
from spans.cli import app as spans_app  # noqa: E402
from train.cli_names import rewrite_aliases, version_line  # noqa: E402
from train.cli_train import demo, eval_, shards_app, train, train_help  # noqa: E402
from train.rollouts.cli import app as rollouts_app  # noqa: E402

app = typer.Typer(
    name="spanroute",
    help=(
        "Turn LLM reasoning rollouts into span-annotated training data and train on it with "
        "span-routed on-policy self-distillation (TRACE, Skill-SD).\n\n"
        "Flow: rollouts generate -> annotate api|self|rule -> (ls push/pull) -> skills extract -> "
        "shards build -> train. Every step writes a new immutable datastore version with lineage. "
        "Start with `spanroute demo`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits -h
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                 help="Print the spanroute, torch, transformers and Python versions and exit."),
) -> None:
    pass


app.add_typer(data_app, name="data", help="Versioned rollout datastore: import, log, show, diff, tag, export, verify.")
app.add_typer(spans_app, name="spans", help="Look at spans: render a response with its spans.")
app.add_typer(rollouts_app, name="rollouts", help="Generate and verify G rollouts per prompt.")
app.add_typer(annotate_app, name="annotate", help="Mark key/error spans by API model, the policy itself, or rules.")
app.add_typer(skills_app, name="skills", help="Condense trajectories into Skill-SD skill summaries.")
app.add_typer(ls_app, name="ls", help="Human span correction in Label Studio: serve, push, pull, status.")
app.add_typer(shards_app, name="shards", help="Turn a datastore version into span-tagged training shards.")
app.command("train", help=train_help())(train)
app.command("eval", help="Held-out accuracy (sampled, greedy), response length and entropy of a checkpoint.")(eval_)
app.command("demo", help="Run the whole flow on the embedded toy world (no GPU, key or server).")(demo)

err_console = Console(stderr=True, soft_wrap=True)  # one error, one line: never wrap it


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; turn any exception into one clean line unless --debug."""
    args, notes = rewrite_aliases(list(sys.argv[1:] if argv is None else argv))
    for note in notes:  # an old option name: still works, says its new name
        err_console.print(note, highlight=False, markup=False)
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="spanroute", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: the parser's own message and exit code
        e.show()
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into a line
        if debug:
            raise
        message = redact(str(e)) or type(e).__name__
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        err_console.print("[dim](run with --debug for the traceback)[/]")
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
