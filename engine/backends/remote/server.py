"""The remote trainer's server: a :class:`~engine.runtime.ports.TrainingClient` (the
local torch one, or a Hugging Face model's) behind Starlette on uvicorn, bound to
loopback only.

Calls of a session are handed to the wrapped client strictly in ``seq`` order (a call
that arrives early waits for its predecessors to be handed over), and each request
answers when its future does; so a client may have the next ``forward_backward`` on
the wire, decoded and queued while this ``optim_step`` computes.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.backends.remote.protocol import CALLS
from engine.runtime.ports import Sample, TrainingClient

LOOPBACK = "127.0.0.1"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text and text[0] else type(error).__name__


@dataclass
class _Session:
    next_seq: int = 0
    turn: asyncio.Condition = field(default_factory=asyncio.Condition)


def build_app(client: TrainingClient) -> Starlette:
    """The HTTP application serving ``client``."""
    sessions: dict[int, _Session] = {}
    ids = itertools.count(1)

    async def new_session(request: Request) -> JSONResponse:
        session = next(ids)
        sessions[session] = _Session()
        return JSONResponse({"session": session})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "version": getattr(client, "version", None)})

    def _submit(call: str, args: dict[str, Any]) -> Any:
        if call == "forward_backward":
            return client.forward_backward([Sample.from_json(s) for s in args["samples"]], [float(a) for a in args["advantages"]])
        if call == "optim_step":
            return client.optim_step()
        if call == "save_weights":
            return client.save_weights(str(args["path"]))
        return client.load_weights(str(args["path"]))

    async def call(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            session, seq, name, args = sessions[int(body["session"])], int(body["seq"]), str(body["call"]), dict(body.get("args") or {})
        except (ValueError, KeyError, TypeError) as err:
            return JSONResponse({"error": f"bad request: {_one_line(err)}"}, status_code=400)
        if name not in CALLS:
            return JSONResponse({"error": f"unknown call {name!r} (known: {', '.join(CALLS)})"}, status_code=400)
        async with session.turn:
            await session.turn.wait_for(lambda: session.next_seq == seq)
            try:
                future = _submit(name, args)
            except (ValueError, KeyError, TypeError) as err:
                future = None
                failure = f"{name}: bad arguments: {_one_line(err)}"
            session.next_seq += 1
            session.turn.notify_all()
        if future is None:
            return JSONResponse({"error": failure}, status_code=400)
        try:
            result = await asyncio.wrap_future(future)
        except Exception as err:  # the call failed: its one line goes back, the server goes on
            return JSONResponse({"error": f"{name}: {_one_line(err)}"}, status_code=400)
        return JSONResponse({"result": result})

    return Starlette(routes=[
        Route("/session", new_session, methods=["POST"]),
        Route("/call", call, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])


def bind(port: int = 0) -> socket.socket:
    """A listening socket on loopback (``port`` 0: any free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def serve(client: TrainingClient, sock: socket.socket) -> None:
    """Serve ``client`` on ``sock`` until interrupted."""
    server = uvicorn.Server(uvicorn.Config(build_app(client), log_level="warning", access_log=False))
    server.run(sockets=[sock])


class ThreadServer:
    """A server in a thread of this process (tests and the benchmark): ``url``, ``stop()``."""

    def __init__(self, client: TrainingClient, port: int = 0) -> None:
        self.client = client
        self.sock = bind(port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(build_app(client), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.client.close()


def serve_in_thread(client: TrainingClient, port: int = 0) -> ThreadServer:
    return ThreadServer(client, port)
