"""Where commands write: output paths checked before any work starts, atomic writes (temporary
file, fsync, rename), and temporary files that a killed write left behind removed by the next
write to the same path.

A temporary file is named `.<name>.<pid>.<random>.tmp` beside its target; a later write removes
the ones whose process is gone (never another live process's). Every OSError on a user's path
becomes an OutputError naming the path and the reason.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

_LEGACY_TMP_AGE_S = 600  # temporaries of the earlier naming carry no pid: removed once this old


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of earlier, dead writers of `path`; returns what it removed."""
    path = Path(path)
    removed = []
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.(?:(\d+)\.)?[^.]+\.tmp$")
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        m = pattern.match(tmp.name)
        if m is None:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        try:
            stale = (pid is not None and pid != os.getpid() and not _alive(pid)) or (
                pid is None and time.time() - tmp.stat().st_mtime > _LEGACY_TMP_AGE_S)
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


_together: list[list[Path]] = []  # the files each open `together` block has created


@contextmanager
def together():
    """The outputs written inside are kept together or not at all: when the block fails, the files
    it created are removed (a figure whose CSV could not follow it is no result)."""
    created: list[Path] = []
    _together.append(created)
    try:
        yield
    except BaseException:
        for path in created:
            try:
                path.unlink()
            except OSError:
                pass
        raise
    finally:
        _together.pop()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it. With several
    processes rank 0 writes and every rank waits for it (distributed.py)."""
    from . import distributed

    path = Path(path)
    new = not path.exists()
    if distributed.is_main():
        _write(path, data)
    distributed.barrier()
    if new and _together:
        _together[-1].append(path)


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {path}: {_reason(exc)}") from None
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, shown: Path) -> None:
    """A folder we can create files in (a file is made and removed at once)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {shown}: {_reason(exc)} in {folder}") from None


def check_file(path, what: str = "output") -> Path:
    """Fail now, before any work, if the file `path` cannot be written later."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    check_folder(path.parent, what, shown=path)
    return path


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure(path, what: str = "figure") -> Path:
    """A figure's path, refused before any work when its format is not one we write or when it
    cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise OutputError(f"{what} {path}: figures are written as {', '.join(FIGURE_SUFFIXES)}, "
                          f"not {path.suffix or 'a file without a suffix'}")
    return check_file(path, what)


def check_folder(folder, what: str = "output", *, shown: Path | None = None) -> Path:
    """Fail now if `folder` cannot be created (where missing) and written into."""
    folder = Path(folder)
    shown = shown or folder
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputError(f"cannot write {what} {shown}: {base} is a file, not a folder")
    _probe(base, shown)
    return folder


def make_folder(folder, what: str = "output folder") -> Path:
    """mkdir -p, with an OutputError naming the folder when it cannot be made."""
    folder = check_folder(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {folder}: {_reason(exc)}") from None
    return folder


def read_cache(path, log=None) -> dict | None:
    """A JSON cache file the toolkit wrote (None when absent). One that does not parse, or is not
    an object, is moved aside to <name>.corrupt-<time> and reported through `log`: the caller
    rebuilds it, and the bad copy stays for inspection."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {_reason(exc)}") from None
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            return doc
        why = f"a JSON {type(doc).__name__}, not an object"
    except json.JSONDecodeError as exc:
        why = f"not valid JSON ({exc.msg} at line {exc.lineno})"
    from . import distributed

    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if distributed.is_main():
            os.replace(path, aside)
    except OSError as exc:
        raise OutputError(f"{path} is {why} and cannot be moved aside ({_reason(exc)}); delete it") from None
    finally:
        distributed.barrier()
    if log is not None:
        log(f"{path} was {why}: moved it to {aside.name} and rebuilding it")
    return None


def cache_key(what: dict) -> str:
    """The one shape of every cache key: what made a result, as canonical JSON."""
    return json.dumps(what, sort_keys=True, separators=(",", ":"))


CACHE_FORMAT = 3  # of Cache files; another (an older version's) is rebuilt


class Cache:
    """A JSON file of results keyed by `cache_key`: {"format": CACHE_FORMAT, "entries": {...}}.
    A put re-reads the file first, so entries that another step wrote meanwhile are kept."""

    def __init__(self, path, log=None):
        self.path, self.log, self._told = Path(path), log, False

    def entries(self) -> dict:
        doc = read_cache(self.path, self.log)
        if doc is None:
            return {}
        if doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("entries"), dict):
            if self.log is not None and not self._told:
                self._told = True
                self.log(f"{self.path} was written by another version of manifoldadv: rebuilding it")
            return {}
        return doc["entries"]

    def get(self, key: str):
        return self.entries().get(key)

    def put(self, key: str, value) -> None:
        entries = self.entries()
        entries[key] = value
        atomic_write_text(self.path, json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1))


def save_figure(fig, path, *, dpi: int = 110, close: bool = True) -> None:
    """A matplotlib figure written atomically, in the format the suffix names (PNG without one)."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
