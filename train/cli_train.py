"""`spanroute shards` commands. Not built yet: see issue #8."""

import typer

shards_app = typer.Typer(no_args_is_help=True)


@shards_app.command("build")
def build_() -> None:
    """Not built yet (issue #8)."""
    raise RuntimeError("`spanroute shards build` is not built yet (issue #8)")


def train() -> None:
    """Not built yet (issue #8)."""
    raise RuntimeError("`spanroute train` is not built yet (issue #8)")


def demo() -> None:
    """Not built yet (issue #8)."""
    raise RuntimeError("`spanroute demo` is not built yet (issue #8)")
