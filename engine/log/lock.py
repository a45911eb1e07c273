"""One writer per log: the lock a writer holds on ``<log>.lock`` for as long as it has
the log open.

The lock is an exclusive ``flock`` on the lock file, which names its holder (process
id, host, since when, as JSON).  A second writer, in this process or another, fails
to take it at once and is refused with :class:`~engine.log.errors.LogLocked` naming
that holder.  The operating system drops the ``flock`` of a process that dies, even
by SIGKILL, so a lock file left by a dead writer is simply taken over (the new holder
overwrites its content; :attr:`WriterLock.stale` is what it said).  Releasing removes
the file while still holding it; a writer that took the lock on a file just removed
sees that the path no longer names it and tries again, so two writers never both hold
the lock.  SQLite's own locking is not enough: in WAL mode it lets two connections
write one log in turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from engine.log.errors import LogLocked


def lock_path(log: str | Path) -> Path:
    """The lock file of the log at ``log``."""
    return Path(f"{log}.lock")


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    """``process 123 on host h since 2024-...`` (what a lock file says), or a plain
    phrase when it says nothing readable."""
    if "pid" not in holder:
        return "another process (its lock file does not say which)"
    return f"process {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"


class WriterLock:
    """The exclusive lock on a log, taken by :meth:`acquire`, given back by :meth:`release`."""

    def __init__(self, log: str | Path) -> None:
        self.log = Path(log)
        self.path = lock_path(log)
        self._fd: int | None = None
        self._pid = 0  # the process that took it (a forked child must not remove it)
        #: What the lock file said when this writer took it over from a dead one (else empty).
        self.stale: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WriterLock":
        """Take the lock, or raise :class:`LogLocked` naming its holder."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                raise LogLocked(
                    f"{self.log} is open for writing by {describe(holder)} (lock {self.path}); "
                    "close that writer first (a lock left by a process that died is taken over by itself)",
                    holder,
                ) from None
            if self._names(fd):
                break
            os.close(fd)  # the holder before us removed this file on release: lock the new one
        import datetime
        import socket

        self.stale = _read(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        self._fd, self._pid = fd, os.getpid()
        return self

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file open as ``fd``."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)

    def __del__(self) -> None:  # a writer dropped without closing lets go of the log when collected
        with contextlib.suppress(Exception):
            self.release()

    def release(self) -> None:
        """Remove the lock file and let go of the lock (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if self._pid == os.getpid() and self._names(fd):
                os.unlink(self.path)
        os.close(fd)  # closing the last descriptor drops the flock


def check_unlocked(log: str | Path) -> None:
    """Raise :class:`LogLocked` naming the holder when a writer has the log at ``log``
    open now; nothing is taken or changed (no lock file is created)."""
    path = lock_path(log)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise LogLocked(
                f"{log} is open for writing by {describe(_read(fd))} (lock {path}); close that writer first", _read(fd)
            ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
