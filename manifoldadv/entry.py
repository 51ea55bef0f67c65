"""The `manifoldadv` console script: signals are heard from the first instant, before the heavy
imports (torch) that take the first seconds, and answered when those end."""

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM in one process, answered as Ctrl-C is (what was interrupted, what is kept), exit 143.
    Under torchrun, distributed.start installs its own handler (another rank stopped)."""

    exit_code = 143


def _terminate(signum, frame):
    raise Terminated()


def main() -> None:
    # While torch imports, a signal is only noted: raised there, KeyboardInterrupt can surface
    # inside torch's C++ initialisation, which then aborts (SIGABRT) instead of unwinding. It is
    # answered as soon as the import ends, a second or two later.
    caught = []
    note = lambda signum, frame: caught.append(signum)  # noqa: E731
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:  # a background job ignores it: keep ignoring
        signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    try:
        from .cli import main as run
    finally:
        if previous_int is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, _terminate)
    if caught:  # nothing has run, nothing is written
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(143 if caught[0] == signal.SIGTERM else 130)
    run()
