"""Calling a python tool: sync functions on a worker thread, coroutines on the loop, under
the tool's timeout; what they return is checked to be JSON-compatible."""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

from agentflow.compiler.hashing import as_json_reads_back

from .loader import python_function
from .spec import ToolContext, ToolError, ToolSpec, TransientToolError
from .workers import tool_threads, with_timeout


def _raised(spec: ToolSpec, exc: BaseException) -> ToolError:
    text = str(exc)
    message = f"tool {spec.name} raised {type(exc).__name__}" + (f": {text}" if text else "")
    transient = isinstance(exc, (TimeoutError, ConnectionError))
    return (TransientToolError if transient else ToolError)(message, tool=spec.name)


async def call_python(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    fn = await python_function(spec, ctx)

    async def invoke() -> Any:
        # Exceptions of the function become ToolErrors here, so that a TimeoutError the
        # function raises is not mistaken for our own timeout below.
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await tool_threads.run(fn, **args)
                if inspect.isawaitable(result):
                    result = await result
        except ToolError:
            raise
        except (Exception, SystemExit) as exc:
            raise _raised(spec, exc) from exc
        return result

    # A sync function that times out keeps running in its worker thread (threads cannot be
    # killed); its result is discarded.
    result = await with_timeout(spec, invoke())
    return _to_json(spec, result, "")


def _to_json(spec: ToolSpec, value: Any, where: str) -> Any:
    if isinstance(value, str):
        return as_json_reads_back(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise ToolError(
            f"tool {spec.name} returned {value!r}{_at(where)}, which is not valid JSON",
            tool=spec.name,
        )
    if isinstance(value, (list, tuple)):
        return [_to_json(spec, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if not isinstance(key, str):
                raise ToolError(
                    f"tool {spec.name} returned a dict with a {type(key).__name__} key"
                    f"{_at(where)}; JSON object keys must be strings",
                    tool=spec.name,
                )
            out[as_json_reads_back(key)] = _to_json(spec, item, f"{where}[{key!r}]")
        return out
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        return _to_json(spec, value.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json(spec, dataclasses.asdict(value), where)
    raise ToolError(
        f"tool {spec.name} returned a {type(value).__name__}{_at(where)}, which is not "
        "JSON-compatible",
        tool=spec.name,
    )


def _at(where: str) -> str:
    return f" at result{where}" if where else ""
