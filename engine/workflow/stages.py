"""Generic stages every workflow can use: awaiting a submitted future."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any, Mapping

from engine.workflow.context import Context
from engine.workflow.ir import register_stage


@register_stage("await_future")
class AwaitFuture:
    """Wait for the future stored under option ``key`` and store its value as
    ``<key>_result``; the point where ``submit_ahead`` splits a loop body."""

    awaits = True
    options = {"key": str}
    required_options = ("key",)

    @staticmethod
    def requires(options: Mapping[str, Any]) -> tuple[str, ...]:
        return (options["key"],) if "key" in options else ()

    @staticmethod
    def provides(options: Mapping[str, Any]) -> tuple[str, ...]:
        return (f"{options['key']}_result",) if "key" in options else ()

    async def execute(self, ctx: Context) -> Context:
        key = ctx.stage_opts["key"]
        future = ctx.get(key)
        if isinstance(future, Future):
            value = await asyncio.wrap_future(future)
        elif asyncio.isfuture(future) or asyncio.iscoroutine(future):
            value = await future
        else:
            raise TypeError(f"stage {ctx.path!r}: state {key!r} is {type(future).__name__}, not a future")
        return ctx.put_all({f"{key}_result": value})
