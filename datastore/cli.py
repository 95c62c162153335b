"""`spanroute data` commands. Not built yet: see issue #2."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data import` is not built yet (issue #2)")


@app.command("log")
def log_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data log` is not built yet (issue #2)")


@app.command("show")
def show_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data show` is not built yet (issue #2)")


@app.command("diff")
def diff_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data diff` is not built yet (issue #2)")


@app.command("tag")
def tag_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data tag` is not built yet (issue #2)")


@app.command("export")
def export_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data export` is not built yet (issue #2)")


@app.command("verify")
def verify_() -> None:
    """Not built yet (issue #2)."""
    raise RuntimeError("`spanroute data verify` is not built yet (issue #2)")

