"""`spanroute ls` commands. Not built yet: see issue #7."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("serve")
def serve_() -> None:
    """Not built yet (issue #7)."""
    raise RuntimeError("`spanroute ls serve` is not built yet (issue #7)")


@app.command("init")
def init_() -> None:
    """Not built yet (issue #7)."""
    raise RuntimeError("`spanroute ls init` is not built yet (issue #7)")


@app.command("push")
def push_() -> None:
    """Not built yet (issue #7)."""
    raise RuntimeError("`spanroute ls push` is not built yet (issue #7)")


@app.command("pull")
def pull_() -> None:
    """Not built yet (issue #7)."""
    raise RuntimeError("`spanroute ls pull` is not built yet (issue #7)")


@app.command("status")
def status_() -> None:
    """Not built yet (issue #7)."""
    raise RuntimeError("`spanroute ls status` is not built yet (issue #7)")

