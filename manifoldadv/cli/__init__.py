"""The `manifoldadv` command line: one module per command, all registered on one Typer app."""

from __future__ import annotations

import typer

from ._app import app
from . import attack, audit, info, profile, reproduce, spectrum, theory, tradeoff, train  # noqa: F401  (importing registers the commands)


def main() -> None:
    typer.main.get_command(app)(prog_name="manifoldadv")


__all__ = ["app", "main"]
