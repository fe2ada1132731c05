"""One call of any tool: arguments checked against the declaration, then handed to the
python, command or builtin kind; and the version of a tool's code for cache keys."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from agentflow.compiler.types import TypeMismatch, Validators, type_from_json

from .command import call_command, command_code_version
from .fs import builtin_code_version, call_builtin
from .loader import python_code_version
from .python import call_python
from .spec import ToolContext, ToolError, ToolSpec


async def call_tool(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    """Run one call of a tool with arguments keyed by parameter name.

    Returns a JSON-compatible value. Raises ToolError (TransientToolError for timeouts and
    passing OS failures). Arguments not declared by the tool are refused with a ToolError.
    """
    _refuse_unknown(spec.name, spec.params, args)
    if spec.kind == "python":
        return await call_python(spec, args, ctx)
    if spec.kind == "command":
        return await call_command(spec, args, ctx)
    if spec.kind == "builtin":
        return await call_builtin(spec, args, ctx)
    raise ToolError(f"tool {spec.name} has an unknown kind {spec.kind!r}", tool=spec.name)


def check_arguments(name: str, params: Sequence[Mapping[str, Any]], args: dict, validators: Validators) -> dict:
    """The arguments of a call checked against the tool's declared parameters (the plan's
    `definition["params"]`), before anything runs: converted as for a model's answer (an
    int may come as "3"), declared defaults filled in. A ToolError names the argument and
    what was expected, so a model can repair its call."""
    _refuse_unknown(name, [p["name"] for p in params], args)
    checked = {}
    for param in params:
        pname, ptype = param["name"], type_from_json(param["type"])
        if pname not in args:
            if not param.get("has_default"):
                raise ToolError(f"argument {pname}: missing; tool {name} takes {_signature(params)}",
                                tool=name)
            checked[pname] = param["default"]
            continue
        try:
            checked[pname] = validators.validate(ptype, args[pname])
        except TypeMismatch as err:
            raise ToolError(f"argument {pname}: expected {ptype}: {_first_problem(err)}",
                            tool=name) from None
    return checked


def _refuse_unknown(name: str, params: Sequence[str], args: dict) -> None:
    unknown = [arg for arg in args if arg not in params]
    if unknown:
        takes = ", ".join(params) if params else "no arguments"
        raise ToolError(
            f"tool {name} got unknown argument(s) {', '.join(map(str, unknown))}; it takes {takes}",
            tool=name,
        )


def _signature(params: Sequence[Mapping[str, Any]]) -> str:
    return "(" + ", ".join(f"{p['name']}: {type_from_json(p['type'])}" for p in params) + ")"


def _first_problem(err: Any) -> str:
    """The first problem pydantic found, with where it is inside the argument."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return (f"at {where}: " if where else "") + first.get("msg", "invalid value")


def tool_code_version(spec: ToolSpec, ctx: ToolContext) -> str:
    """The version of a tool's code, for cache keys: equal versions mean equal behaviour.

    - python: a hash of the target and the source of the resolved module file (the module's
      `.py`, or a package's `__init__.py`). Modules it imports are not covered. A module
      without a source file (built in, frozen) is versioned by the Python version; a module
      that cannot be found gets an "unresolved" version (the call itself then fails).
    - command: a hash of the argv template, the cwd and how stdout is read. The identity of
      the executable (which `python` is on PATH, its version) is out of scope.
    - builtin: its version in `names.BUILTIN_TOOLS`, bumped when its behaviour changes.
    """
    if spec.kind == "builtin":
        return builtin_code_version(spec)
    if spec.kind == "command":
        return command_code_version(spec)
    if spec.kind == "python":
        return python_code_version(spec, ctx)
    return f"unknown:{spec.kind}"
