"""Where output goes: results to stdout (a rich table, or exactly one JSON document with
--json), everything else (logs, progress bars) to stderr."""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Consoles resolve sys.stdout/sys.stderr at write time, so test runners that swap them still capture.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_quiet = False


def set_quiet(flag: bool) -> None:
    global _quiet
    _quiet = flag


def log(message: str) -> None:
    """A progress or status line on stderr."""
    if not _quiet:
        err.print(message, highlight=False, markup=False)


def _clean(obj):
    # JSON has no NaN/inf: emit null so every document parses with a strict reader.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def to_jsonable(obj):
    return _clean(obj)


def emit_json(obj) -> None:
    if out.quiet:  # a process other than rank 0 of several
        return
    sys.stdout.write(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def only_rank_zero_speaks(main: bool) -> None:
    """Of several processes, rank 0 alone prints results (stdout) and logs (stderr); errors
    (the CLI's `error:` lines) still come from every rank."""
    out.quiet = not main
    if not main:
        set_quiet(True)


@contextmanager
def progress(transient: bool = True):
    """A rich progress bar on stderr; silent when stderr is not a terminal (CI, pipes)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=_quiet or not err.is_terminal,
    )
    with bar:
        yield bar


class StatusClock:
    """When a progress bar may show a value that lives on the device: reading it waits for the
    device, so loops read it at most every `every` seconds, and never while the bar is off."""

    def __init__(self, bar: Progress, every: float = 0.5):
        self.live, self.every, self.next = not bar.disable, every, 0.0

    def due(self) -> bool:
        if not self.live:
            return False
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.every
        return True


# What the command is in the middle of, for the one line an interrupt (Ctrl-C) prints.
_doing: list[tuple[str, str]] = []


@contextmanager
def doing(what: str, kept: str = ""):
    """Within this block an interrupt reports `what` was going on and `kept`, what survives and
    how to go on. Blocks nest: the line names the innermost `what` and the outermost `kept` (the
    command that was run decides the advice)."""
    _doing.append((what, kept))
    try:
        yield
    except KeyboardInterrupt as exc:
        if not hasattr(exc, "doing"):  # the innermost block sees the whole stack
            exc.doing = list(_doing)
        raise
    finally:
        _doing.pop()


def interrupted_line(exc: BaseException | None = None) -> str:
    """The interrupt's message: 'interrupted <what>; <kept>'."""
    stack = getattr(exc, "doing", None) or list(_doing)
    what = next((w for w, _ in reversed(stack) if w), "")
    # outside every block a command has written nothing yet (or, like theory, writes at the end)
    kept = next((k for _, k in stack if k), "nothing was written")
    return f"interrupted {what}".strip() + f"; {kept}"
