"""The remote :class:`~engine.runtime.ports.TrainingClient`: each call is numbered and
sent from a small pool of connections at once, returning its future at once; the
server runs them in number order.  A trainer that is gone (killed, unreachable)
fails the future with :class:`RemoteTrainerGone`, one line naming the URL and the
call; a call the trainer refused fails with :class:`RemoteCallFailed`, its one line.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

import httpx

from engine.runtime.ports import Sample


class RemoteCallFailed(RuntimeError):
    """The remote trainer ran the call and it failed (its message is the server's line)."""


class RemoteTrainerGone(ConnectionError):
    """The remote trainer could not be reached or died during a call."""


class RemoteTrainingClient:
    """The trainer served at ``url`` (``rollout-ledger serve-trainer``).  ``depth``
    calls may be in flight at once (1: each call waits for the last one's answer, no
    pipelining)."""

    def __init__(self, url: str, *, depth: int = 4, timeout: float = 600.0) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.url = url.rstrip("/")
        self.on_close: Callable[[], None] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, limits=httpx.Limits(max_connections=depth + 1))
        self._senders = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="remote-trainer")
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._last: Future[Any] | None = None
        self._depth = depth
        self.session = int(self._post("/session", {}, "connect")["session"])

    def _post(self, path: str, body: dict[str, Any], call: str) -> Any:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as err:
            raise RemoteTrainerGone(f"remote trainer {self.url} is gone ({call}): {type(err).__name__}: {err}".splitlines()[0]) from None
        if response.status_code == 400:
            raise RemoteCallFailed(f"remote trainer {self.url}: {response.json().get('error', 'failed')}")
        if response.status_code != 200:
            raise RemoteTrainerGone(f"remote trainer {self.url} answered HTTP {response.status_code} ({call})")
        return response.json()

    def _call(self, name: str, args: dict[str, Any]) -> Future[Any]:
        with self._lock:  # numbers follow submission order
            seq = next(self._seq)
            body = {"session": self.session, "seq": seq, "call": name, "args": args}
            previous = self._last
            if self._depth == 1 and previous is not None:
                previous.exception()  # unpipelined: wait for the last answer before sending
            future = self._senders.submit(lambda: self._post("/call", body, name)["result"])
            self._last = future
            return future

    @property
    def version(self) -> int:
        return int(self._get_health()["version"])

    def _get_health(self) -> Any:
        try:
            return self._http.get("/health").json()
        except httpx.HTTPError as err:
            raise RemoteTrainerGone(f"remote trainer {self.url} is gone (health): {type(err).__name__}") from None

    def forward_backward(self, samples: Sequence[Sample], advantages: Sequence[float]) -> Future[dict[str, float]]:
        return self._call("forward_backward", {"samples": [s.to_json() for s in samples], "advantages": [float(a) for a in advantages]})

    def optim_step(self) -> Future[dict[str, float]]:
        return self._call("optim_step", {})

    def save_weights(self, path: str) -> Future[str]:
        return self._call("save_weights", {"path": str(path)})

    def load_weights(self, path: str) -> Future[int]:
        return self._call("load_weights", {"path": str(path)})

    def close(self) -> None:
        self._senders.shutdown(wait=True)
        self._http.close()
        if self.on_close is not None:
            self.on_close()
