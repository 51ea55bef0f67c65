"""The `manifoldadv` console script: signals are answered from the first instant, before the
heavy imports (torch) that take the first seconds."""

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM in one process, answered as Ctrl-C is (what was interrupted, what is kept), exit 143.
    Under torchrun, distributed.start installs its own handler (another rank stopped)."""

    exit_code = 143


def _terminate(signum, frame):
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from .cli import main as run
    except KeyboardInterrupt as exc:  # while importing: nothing has run, nothing is written
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(getattr(exc, "exit_code", 130))
    run()
