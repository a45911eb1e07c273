"""Where an RL run's event loop runs: in the caller's thread, or in a thread of its own.

The ledger, the executor, the engine and the sample store of a run
(:class:`~engine.workflows.rl_run.RLRun`) live on one asyncio event loop.  By default
the loop runs only while the caller waits on it (:meth:`RunLoop.run`), so the engine
steps while the trainer waits for a batch and never while it trains.  With
``overlap`` (:meth:`RunLoop.start_thread`) the loop runs in a thread of its own for
the run's whole life, on a CUDA stream of its own on a GPU, and the caller's calls
into what lives on it go through it (:meth:`RunLoop.call`): they run between two of
the loop's steps, so those objects are only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine, TypeVar

import torch

T = TypeVar("T")


class RunLoop:
    """An event loop, driven by its caller or (after :meth:`start_thread`) by a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    @property
    def threaded(self) -> bool:
        """Whether the loop runs in a thread of its own."""
        return self.thread is not None

    def start_thread(self, device: torch.device) -> None:
        """Run the loop in a thread of its own until :meth:`close`; on a GPU the thread
        issues its work on a CUDA stream of its own, on the caller's device.  A thread
        that cannot start raises its error here."""
        index = None
        if device.type == "cuda":
            torch.cuda.synchronize()  # what the caller built (the engine's weights) is complete before the thread reads it
            index = torch.cuda.current_device()  # (a new thread starts on device 0)
        failed: list[BaseException] = []
        ready = threading.Event()

        def serve() -> None:
            try:
                asyncio.set_event_loop(self.loop)
                if index is not None:
                    torch.cuda.set_device(index)
                    torch.cuda.set_stream(torch.cuda.Stream(index))
            except BaseException as error:  # handed to the starting thread, which raises it
                failed.append(error)
                return
            finally:
                ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="rollout-ledger-generation", daemon=True)
        self.thread.start()
        ready.wait()
        if failed:
            self.thread.join()
            self.thread = None
            raise RuntimeError(f"--overlap: the generation thread could not start: {failed[0]}") from failed[0]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and return its result."""
        if self.thread is None:
            return self.loop.run_until_complete(coroutine)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        while True:  # a loop whose thread is gone would leave the caller waiting forever
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not self.thread.is_alive():
                    future.cancel()
                    raise RuntimeError("--overlap: the generation thread ended; the run cannot go on") from None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` where the loop's objects live: here, or on the loop's thread
        between two of its steps."""
        if self.thread is None:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return self.run(call())

    def stop_thread(self) -> None:
        """End the loop's thread (if any); the loop is the caller's again."""
        if self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.thread = None

    def is_closed(self) -> bool:
        return self.loop.is_closed()

    def close(self) -> None:
        self.stop_thread()
        self.loop.close()
