"""`spanroute annotate` and `spanroute skills` commands. Not built yet: see issue #6."""

import typer

annotate_app = typer.Typer(no_args_is_help=True)
skills_app = typer.Typer(no_args_is_help=True)


@annotate_app.command("api")
def api_() -> None:
    """Not built yet (issue #6)."""
    raise RuntimeError("`spanroute annotate api` is not built yet (issue #6)")


@annotate_app.command("self")
def self_() -> None:
    """Not built yet (issue #6)."""
    raise RuntimeError("`spanroute annotate self` is not built yet (issue #6)")


@annotate_app.command("rule")
def rule_() -> None:
    """Not built yet (issue #6)."""
    raise RuntimeError("`spanroute annotate rule` is not built yet (issue #6)")


@skills_app.command("extract")
def extract_() -> None:
    """Not built yet (issue #6)."""
    raise RuntimeError("`spanroute skills extract` is not built yet (issue #6)")
