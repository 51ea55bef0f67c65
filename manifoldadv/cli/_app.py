"""The Typer app and the one place that maps errors to messages and exit codes."""

from __future__ import annotations

import os
import sys

import typer
import typer.core

try:  # typer >= 0.2x vendors click; its exceptions derive from TyperException
    from typer import TyperException as CliError
except ImportError:  # pragma: no cover - older typer on top of click
    from click import ClickException as CliError

from ..runtime import console
from ..runtime.distributed import PeerLost, stop
from ..errors import ManifoldError

DEBUG_ENV = "MANIFOLDADV_DEBUG"


def _fail(message: str, code: int) -> int:
    """One line on stderr. Under torchrun every process finds the same usage error (exit 2): the
    first process alone says it; other failures may be one process's own, so each says its own."""
    if code != 2 or int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"error: {message}", err=True)
    return code


class Interrupted(ManifoldError):
    """Ctrl-C (exit 130) or SIGTERM (143): the message says what was interrupted and what is kept
    (console.doing)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class RunBroken(ManifoldError):
    """Another process of a torchrun run stopped; this one stops too, saying what is kept."""


class ManifoldGroup(typer.core.TyperGroup):
    """Runs the command non-standalone so every failure becomes one `error: ...` line."""

    def invoke(self, ctx):
        # typer would turn the interrupt into a silent exit 130; say what was interrupted instead
        try:
            return super().invoke(ctx)
        except PeerLost as exc:  # torchrun stopped this rank because another one died
            raise RunBroken(f"another process of this run stopped ({str(exc) or 'SIGTERM'}); "
                            f"{console.interrupted_line(exc)}") from None
        except KeyboardInterrupt as exc:
            raise Interrupted(console.interrupted_line(exc), getattr(exc, "exit_code", 130)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            rv = super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) else 0
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            code = _fail("aborted", 130)
        except CliError as exc:  # bad option, missing argument, bad value: usage
            if debug:
                raise
            message = exc.format_message()
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            code = _fail(message + hint, exc.exit_code)
        except ManifoldError as exc:
            if debug:
                raise
            code = _fail(str(exc), exc.exit_code)
        except OSError as exc:  # a user's path the command read or wrote without wrapping the error
            if debug or exc.filename is None:
                raise
            code = _fail(f"{exc.filename}: {exc.strerror or exc}", 2)
        except KeyboardInterrupt as exc:
            code = _fail(console.interrupted_line(exc), getattr(exc, "exit_code", 130))
        except Exception as exc:  # a bug: say so in one line unless debugging
            if debug:
                raise
            code = _fail(f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)", 1)
        finally:
            stop()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="manifoldadv",
    cls=ManifoldGroup,
    help="Adversarial robustness along the directions of the data manifold: "
    "regular vs generative attacks, covariance spectra, Gaussian-mixture theory, trade-offs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
