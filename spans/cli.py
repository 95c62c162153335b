"""`spanroute spans` commands. Not built yet: see issue #3."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show_() -> None:
    """Not built yet (issue #3)."""
    raise RuntimeError("`spanroute spans show` is not built yet (issue #3)")

