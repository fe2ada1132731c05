"""The activities: one model call, one tool call, on whichever worker picks them up.

Both heartbeat while they run, so a worker that dies is noticed within the heartbeat timeout
and the call is retried on another worker, and so that a cancelled workflow stops them.
Errors are classified as locally: a transient error is retryable until the spec's `retries`
are spent, a permanent one (ModelError, ToolError) is not. A non-idempotent tool's call has
one attempt (`once`): it retries its transient errors itself. Results name the worker. A
tool's result too large to store fails its call here, as the local ledger fails its node.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ..models import ModelError, TransientModelError, load_litellm, client_for, is_scripted
from ..retry import retrying
from ..store import ValueTooLarge, bounded_json, result_too_large
from ..tools import ToolContext, ToolError, TransientToolError, call_tool
from . import wire


@contextlib.asynccontextmanager
async def _heartbeating(identity: str):
    timeout = activity.info().heartbeat_timeout
    interval = min(10.0, timeout.total_seconds() / 3) if timeout else 10.0

    async def beat() -> None:
        while True:
            activity.heartbeat(identity)
            await asyncio.sleep(interval)

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _error(err: Exception, kind: str, transient: bool, retries: int, retry_after: float | None = None):
    attempt = activity.info().attempt
    return ApplicationError(str(err), {"attempt": attempt}, type=kind,
                            non_retryable=not transient or attempt >= retries + 1,
                            next_retry_delay=timedelta(seconds=retry_after) if retry_after else None)


class Activities:
    def __init__(self, identity: str) -> None:
        self.identity = identity

    @activity.defn(name=wire.MODEL_ACTIVITY)
    async def model_call(self, payload: dict) -> dict:
        info = activity.info()
        request = wire.request_from_wire(payload["request"])
        request = replace(request, attempt=request.attempt + info.attempt - 1)
        retries = int(payload["retries"])
        async with _heartbeating(self.identity):
            if not is_scripted(request.model):  # a first import of litellm takes seconds: not on the loop
                await asyncio.to_thread(load_litellm)
            try:
                response = await client_for(request.model).complete(request)
            except TransientModelError as err:
                raise _error(err, "TransientModelError", True, retries, err.retry_after) from None
            except ModelError as err:
                raise _error(err, "ModelError", False, retries) from None
        return {"response": wire.response_to_wire(response), "attempt": info.attempt, "worker": self.identity}

    @activity.defn(name=wire.PROGRAM_ACTIVITY)
    async def compile_program(self, payload: dict) -> dict:
        """A program a model wrote, compiled in its task's scope: the workflow's sandbox loads
        no parser. Its value is the compiled program, or its diagnostics as text."""
        from agentflow.compiler.programs import compile_program
        program = compile_program(payload["source"], payload["plan"], payload["target"], payload["call_id"])
        return {"program": program, "worker": self.identity}

    @activity.defn(name=wire.TOOL_ACTIVITY)
    async def tool_call(self, payload: dict) -> dict:
        info = activity.info()
        spec = wire.spec_from_wire(payload["spec"])
        ctx = ToolContext(spec_dir=Path(payload["spec_dir"]), workspace=Path(payload["workspace"]))
        retries = int(payload["retries"])
        async with _heartbeating(self.identity):
            try:
                value = await (retrying(retries, TransientToolError, lambda: call_tool(spec, payload["args"], ctx))
                               if payload.get("once") else call_tool(spec, payload["args"], ctx))
            except TransientToolError as err:
                raise _error(err, "TransientToolError", True, retries) from None
            except ToolError as err:
                raise _error(err, "ToolError", False, retries) from None
        try:
            bounded_json(value)
        except ValueTooLarge as err:
            raise _error(ToolError(result_too_large(err)), "ToolError", False, retries) from None
        return {"value": value, "attempt": info.attempt, "worker": self.identity}
