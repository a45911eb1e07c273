"""Writing files so that nothing is half-written: every file a command writes (an
exported log, an imported database, a report, sweep results, a scenario, a
checkpoint) goes through :func:`atomic_output`.

The content is written to a temporary file in the target's directory, flushed and
fsynced, then renamed over the target (and the directory fsynced, so the rename
itself survives a crash).  A failure or an interrupt at any point removes the
temporary file and leaves the target as it was: a reader sees the old file or the
whole new one, never a part.  :func:`check_output` refuses, before any work starts,
an output that cannot be written or that is one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


class OutputError(Exception):
    """An output path that cannot be written, or that names one of the inputs."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through links too); a missing path is
    compared by its resolved name."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | Path, *inputs: str | Path) -> Path:
    """``path`` as a Path, once it is known to be writable as a new or replaced file and
    not to be any of ``inputs``; else :class:`OutputError` naming it."""
    path = Path(path)
    for given in inputs:
        if same_file(path, given):
            raise OutputError(f"{path}: is also an input; write the output to another path")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot be written: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be written: the directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: cannot be written: the file is read-only")
    return path


def check_directory(path: str | Path) -> Path:
    """``path`` as a Path, once it is known to be a writable directory or one that can
    be made (its nearest existing ancestor is a writable directory); else
    :class:`OutputError` naming it.  Nothing is created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{path}: is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: the directory is not writable")
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot be made: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be made: the directory {ancestor} is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a name (SQLite,
    ``torch.save``); once the block ends without an error the file there is fsynced
    and renamed to ``path``.  On an error it is removed and ``path`` is untouched."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
    os.close(fd)
    partial = Path(name)
    try:
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp makes it private; give the file the usual mode
        yield partial
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _fsync_directory(directory)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", **options: Any) -> Iterator[IO[Any]]:
    """An open file (``mode`` ``"w"`` or ``"wb"``; ``options`` as for :func:`open`,
    ``encoding`` defaulting to UTF-8 for text) whose content replaces ``path`` whole
    once the block ends without an error; on an error nothing is left behind."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        options.setdefault("encoding", "utf-8")
    with atomic_path(path) as partial:
        with open(partial, mode, **options) as handle:
            yield handle
            handle.flush()


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Replace ``path`` with ``content`` at once (text as UTF-8)."""
    with atomic_output(path, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
    return Path(path)
