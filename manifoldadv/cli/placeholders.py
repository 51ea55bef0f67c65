"""Commands whose issues have not landed yet: they exit 2 and say so, with no fake output."""

from __future__ import annotations

from ..errors import NotImplementedYet
from ._app import app


def _placeholder(name: str, summary: str):
    def command() -> None:
        raise NotImplementedYet(f"`manifoldadv {name}` is not implemented yet")

    command.__doc__ = f"{summary} (not implemented yet)"
    app.command(name=name)(command)


for _name, _summary in [
    ("tradeoff", "Robustness trade-off tables (the paper's Table 2)"),
    ("reproduce", "Run the paper's whole study and write a report"),
]:
    _placeholder(_name, _summary)
