"""The trajectory store: the samples of completed rollouts, by rollout id, so that a
resumed run finds the data of every rollout its log calls ready."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from engine.runtime.ports import Sample


class TrajectoryStore:
    """Samples of completed rollouts, by rollout id: SQLite (WAL) at ``path``, or in memory.
    Rows are pickles written and read by this run only (a run directory is trusted).
    Writes are durable after :meth:`commit`; the run commits before it writes the
    ledger's log, so the log never names an accepted rollout whose samples are lost."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._memory: dict[str, bytes] = {}
        self._db: sqlite3.Connection | None = None
        if path is not None:
            # a run that generates in a thread of its own (``--overlap``) writes from that
            # thread; its calls are serialised through the run's event loop
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS samples (rollout TEXT PRIMARY KEY, data BLOB NOT NULL)")

    def put(self, rollout: str, samples: Sequence[Sample]) -> None:
        data = pickle.dumps([s.to_json() for s in samples], protocol=pickle.HIGHEST_PROTOCOL)
        if self._db is None:
            self._memory[rollout] = data
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute("INSERT OR REPLACE INTO samples VALUES (?, ?)", (rollout, data))

    def commit(self) -> None:
        """Make the samples written so far durable."""
        if self._db is not None and self._db.in_transaction:
            self._db.execute("COMMIT")

    def get(self, rollout: str) -> list[Sample]:
        """The samples of ``rollout``; a missing one raises ``KeyError`` naming it."""
        if self._db is None:
            data = self._memory.get(rollout)
        else:
            row = self._db.execute("SELECT data FROM samples WHERE rollout = ?", (rollout,)).fetchone()
            data = None if row is None else row[0]
        if data is None:
            raise KeyError(f"no stored samples for rollout {rollout!r}")
        return [Sample.from_json(obj) for obj in pickle.loads(data)]

    def close(self) -> None:
        """Commit and close."""
        if self._db is not None:
            self.commit()
            self._db.close()


def read_stored(path: str | Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """The samples of each rollout in a run's store at ``path``, read only (the file is
    not changed), as the plain dicts the run pickled, those with a completion, in the
    store's order (the order the rollouts were accepted); none when there is no file.
    A file that is not a store raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    # a closed store is one file, opened as immutable so that reading it leaves no -wal or
    # -shm beside it; one with a write-ahead log (a run that did not close it) is read
    # through the log, which SQLite then needs its index for
    mode = "mode=ro" if path.with_name(path.name + "-wal").exists() else "immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
        try:
            rows = db.execute("SELECT rollout, data FROM samples").fetchall()
        finally:
            db.close()
        return [(rollout, [sample for sample in pickle.loads(data) if sample.get("completion")]) for rollout, data in rows]
    except (sqlite3.Error, pickle.UnpicklingError, TypeError, EOFError, AttributeError) as err:
        raise ValueError(f"{path}: not a run's sample store ({err})") from None
