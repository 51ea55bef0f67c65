"""Errors the CLI knows how to report: one line on stderr and an exit code, never a traceback."""


class ManifoldError(Exception):
    """Base of every error meant for the user. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(ManifoldError, ValueError):
    """Bad arguments or bad input files (exit 2); a ValueError, so that API callers who catch
    those catch these."""

    exit_code = 2


class DataError(UsageError):
    """A data set file is missing, truncated or malformed."""


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, of the wrong kind, or not safetensors."""


class OutputError(UsageError):
    """An output path that cannot be written (missing permission, a file where a folder must be,
    a full disk): exit 2, naming the path and the reason."""


class TrainingError(ManifoldError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class NotImplementedYet(UsageError):
    """A command whose issue has not landed yet."""


class ExtensionError(ManifoldError):
    """The compiled extension is required (MANIFOLDADV_REQUIRE_EXT=1) but could not be loaded."""

    exit_code = 3
