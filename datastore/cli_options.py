"""The store options every command that reads or writes a datastore declares, declared once.

Typer keeps no state in an option object, so one object serves every command that lists it.
"""

import typer

STORE = typer.Option(..., "--store", "-s", help="Datastore directory (`spanroute data import` or "
                     "`spanroute rollouts generate` creates it).")
VERSION = typer.Option(None, "--version", "-v", help="A version number or a tag name; default: the latest version.")
