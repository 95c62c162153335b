"""`spanroute rollouts` commands. Not built yet: see issue #5."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("generate")
def generate_() -> None:
    """Not built yet (issue #5)."""
    raise RuntimeError("`spanroute rollouts generate` is not built yet (issue #5)")

