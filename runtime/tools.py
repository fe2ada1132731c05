"""Tools: the template language, and calling python, command and builtin tools.

A tool is declared in a spec (`tool name(params) -> Type { ... }`) and reaches this module as a
`ToolSpec`. `call_tool` runs one call and returns a JSON-compatible value, or raises:

- `ToolError`: the call failed in a way the calling model should see; the message is written
  for that reader (no tracebacks, no internal file names).
- `TransientToolError` (a `ToolError`): a timeout or a passing OS failure; the runner retries
  it with backoff before treating it as a `ToolError`.

Three kinds of tools:

- **python** (`target = "module.path:function"`): resolved beside the spec first
  (`<spec_dir>/module/path.py` or `<spec_dir>/module/path/__init__.py`), then as a normal
  import. Modules beside a spec are loaded under a private package name per spec directory, so
  two specs may each have their own `tools/text.py`, and `sys.path` is never changed. Inside
  such a module, import sibling modules relatively (`from . import helpers`). A module beside a
  spec is reloaded when its file changes (its helpers are not); environment modules are
  imported once per process.
- **command** (`target` = an argv template): each element is rendered on its own and passed as
  one argument, with no shell, so no value can inject a command. stdout is the result (text
  when `returns_str`, JSON otherwise); a non-zero exit status is a `ToolError` carrying the
  tail of stderr.
- **builtin** (`fs.read`, `fs.write`, `fs.list`): files confined to the workspace. A path that
  resolves outside it (absolute, `..`, or through a symlink) is refused before anything is
  touched.

Boundaries every call keeps: arguments are checked against the declared parameter types
(`check_arguments`) before anything runs; every call has a timeout (`DEFAULT_TIMEOUT_S` unless
the tool sets `timeout`); a command's stdout is cut after `OUTPUT_CAP_BYTES`; an OS failure
(a name too long, a path that cannot be encoded) is the tool's error, never the run's crash;
and what tools print goes to stderr while `prints_to_stderr` is active (stdout carries the
run's result).

`tool_code_version` gives the version of a tool's code for cache keys (see its docstring for
what it covers and what it does not).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import functools
import dataclasses
import errno
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import math
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Sequence, cast

from agentflow.compiler.hashing import as_json_reads_back, canonical_json, digest
from agentflow.compiler.names import BUILTIN_TOOLS
from agentflow.compiler.types import Validators, type_from_json
from agentflow.compiler.templates import format_path, placeholders

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TIMEOUT_S",
    "OUTPUT_CAP_BYTES",
    "CompiledTemplate",
    "TemplateError",
    "TemplateRef",
    "ToolContext",
    "ToolError",
    "ToolSpec",
    "TransientToolError",
    "call_tool",
    "check_arguments",
    "compile_template",
    "prints_to_stderr",
    "render_template",
    "tool_code_version",
]


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class ToolSpec:
    """One declared tool, as the runtime needs it."""

    name: str
    params: tuple[str, ...]  # parameter names in declaration order
    kind: str  # "python" | "command" | "builtin"
    target: str | tuple[str, ...]  # "module.path:function" | argv template | "fs.read" ...
    returns_str: bool  # command stdout is returned as text when True, parsed as JSON otherwise
    timeout_s: float | None = None
    cwd: str | None = None  # relative to the workspace (command tools)


@dataclass(frozen=True)
class ToolContext:
    """Where a tool call runs."""

    spec_dir: Path  # the .agentflow file's directory: python tools resolve here first
    workspace: Path  # the confinement root of fs builtins and the default cwd of commands


class ToolError(Exception):
    """A tool failed in a way the calling model should see. `str(err)` is the message."""

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        exit_status: int | None = None,
        stderr: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.exit_status = exit_status  # command tools: the exit status (negative: signal)
        self.stderr = stderr  # command tools: the tail of stderr

    def __str__(self) -> str:
        return self.message


class TransientToolError(ToolError):
    """A timeout or a passing OS failure: worth retrying with backoff."""


class TemplateError(Exception):
    """A template that cannot be parsed, or names something absent at run time."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset  # character offset of the offending `{` in the template, if known

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Templates
#
# `{expr}` where expr is `name`, `a.b.c`, `xs[0]`, `xs[-1]` or `a.b[2].c`; `{{` and `}}` are literal
# braces; a lone `{` or `}` is an error (as in Python's str.format).

@dataclass(frozen=True)
class TemplateRef:
    """One `{expr}` of a template: `path[0]` is the name, then field names and int indexes."""

    expr: str  # normalized: `a.b[0]`, without braces and blanks
    path: tuple[str, *tuple[str | int, ...]]
    offset: int  # offset of the `{` in the template


class CompiledTemplate:
    """A parsed template: literal text and references, rendered many times."""

    __slots__ = ("source", "parts", "refs")

    def __init__(self, source: str, parts: tuple[str | TemplateRef, ...]) -> None:
        self.source = source
        self.parts = parts
        self.refs = tuple(p for p in parts if isinstance(p, TemplateRef))

    def render(self, values: Mapping[str, Any]) -> str:
        parts = self.parts
        if not self.refs:
            return cast(str, parts[0]) if parts else ""  # no references: the one part is text
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_format_value(_lookup(part, values), part))
        return "".join(out)


@lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    """Parse a template once (cached by its text), with the compiler's own template
    parser, so run time and compile time agree on what a template says."""
    parts: list[str | TemplateRef] = []
    last = 0
    for ph in placeholders(template):
        if ph.root is None:
            raise TemplateError(f"{ph.error} at offset {ph.start} (write `{{{{` and `}}}}` for literal "
                                f"braces)", offset=ph.start)
        literal = _unescape_braces(template[last:ph.start])
        if literal:
            parts.append(literal)
        parts.append(TemplateRef(expr=format_path(ph.root, ph.path), path=(ph.root, *ph.path), offset=ph.start))
        last = ph.end
    tail = _unescape_braces(template[last:])
    if tail or not parts:
        parts.append(tail)
    return CompiledTemplate(template, tuple(parts))


def _unescape_braces(literal: str) -> str:
    return literal.replace("{{", "{").replace("}}", "}")


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{expr}` references from `values`. Raises TemplateError."""
    return compile_template(template).render(values)


def _describe(path: tuple[str | int, ...]) -> str:
    return format_path(str(path[0]), path[1:])


def _lookup(ref: TemplateRef, values: Mapping[str, Any]) -> Any:
    path = ref.path
    try:
        value = values[path[0]]
    except KeyError:
        raise TemplateError(
            f"template refers to `{path[0]}`, which is not defined", offset=ref.offset
        ) from None
    for i in range(1, len(path)):
        if value is None:
            return None
        step = path[i]
        if isinstance(step, int):
            if isinstance(value, (list, tuple)):
                if -len(value) <= step < len(value):
                    value = value[step]
                    continue
                raise TemplateError(
                    f"template refers to `{_describe(path[: i + 1])}`, but "
                    f"`{_describe(path[:i])}` has only {len(value)} item(s)",
                    offset=ref.offset,
                )
            raise TemplateError(
                f"template refers to `{_describe(path[: i + 1])}`, but "
                f"`{_describe(path[:i])}` is {_kind(value)}, not a list",
                offset=ref.offset,
            )
        value = _field(value, step, ref, path[: i + 1])
    return value


_MISSING = object()


def _field(value: Any, name: str, ref: TemplateRef, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, Mapping):
        found = value.get(name, _MISSING)
    elif hasattr(type(value), "model_fields"):  # a pydantic model
        found = getattr(value, name) if name in type(value).model_fields else _MISSING
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = {f.name for f in dataclasses.fields(value)}
        found = getattr(value, name) if name in names else _MISSING
    else:
        raise TemplateError(
            f"template refers to `{_describe(path)}`, but `{_describe(path[:-1])}` is "
            f"{_kind(value)}, which has no fields",
            offset=ref.offset,
        )
    if found is _MISSING:
        raise TemplateError(
            f"template refers to `{_describe(path)}`, but `{_describe(path[:-1])}` has no "
            f"field `{name}`",
            offset=ref.offset,
        )
    return found


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a record"
    return f"a {type(value).__name__}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"a {type(value).__name__} is not JSON-compatible")


def _format_value(value: Any, ref: TemplateRef) -> str:
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"cannot render `{ref.expr}`: {exc}", offset=ref.offset) from None


# --------------------------------------------------------------------------------------------
# Calling tools


_STDERR_TAIL = 2000
_OUTPUT_QUOTE = 200
_PATH_QUOTE = 200

DEFAULT_TIMEOUT_S = 600.0  # a tool without `timeout` is stopped after 10 minutes
OUTPUT_CAP_BYTES = 1 << 20  # a command's stdout beyond 1 MiB is cut (and says so)


async def call_tool(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    """Run one call of a tool with arguments keyed by parameter name.

    Returns a JSON-compatible value. Raises ToolError (TransientToolError for timeouts and
    passing OS failures). Arguments not declared by the tool are refused with a ToolError.
    """
    _refuse_unknown(spec.name, spec.params, args)
    if spec.kind == "python":
        return await _call_python(spec, args, ctx)
    if spec.kind == "command":
        return await _call_command(spec, args, ctx)
    if spec.kind == "builtin":
        return await _call_builtin(spec, args, ctx)
    raise ToolError(f"tool {spec.name} has an unknown kind {spec.kind!r}", tool=spec.name)


def check_arguments(name: str, params: list[dict], args: dict, validators: Validators) -> dict:
    """The arguments of a call checked against the tool's declared parameters (the plan's
    `definition["params"]`), before anything runs: converted as for a model's answer (an
    int may come as "3"), declared defaults filled in. A ToolError names the argument and
    what was expected, so a model can repair its call."""
    from pydantic import ValidationError
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
        except ValidationError as err:
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


def _signature(params: list[dict]) -> str:
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
        version = BUILTIN_TOOLS.get(str(spec.target))
        return f"builtin:{spec.target}@{version}" if version else f"builtin:unknown:{spec.target}"
    if spec.kind == "command":
        target = [spec.target] if isinstance(spec.target, str) else list(spec.target)
        output = "str" if spec.returns_str else "json"
        return "command:" + digest("command", canonical_json(target), spec.cwd or "", output)
    if spec.kind == "python":
        try:
            module_name, _ = _split_target(spec.name, spec.target)
        except ToolError:
            return "python:" + digest("python-unresolved", str(spec.target))
        spec_dir = _resolved_dir(ctx.spec_dir)
        source = _beside_spec_file(spec_dir, module_name) or _environment_file(module_name)
        if source is not None:
            try:
                return "python:" + digest("python", str(spec.target), _file_sha256(source))
            except OSError:
                pass
        if _environment_module_exists(module_name):
            return "python:" + digest("python-nosource", str(spec.target), sys.version)
        return "python:" + digest("python-unresolved", str(spec.target))
    return f"unknown:{spec.kind}"


# --------------------------------------------------------------------------------------------
# Python tools

_load_lock = threading.RLock()
# (spec_dir, module) -> (module, fingerprint of the source file beside the spec, or None)
_modules: dict[tuple[str, str], tuple[ModuleType, tuple[int, int] | None]] = {}
_checked_at: dict[tuple[str, str], float] = {}
FRESHNESS_S = 0.5
_spec_packages: dict[str, str] = {}  # spec_dir -> private package name
_env_files: dict[str, Path | None] = {}  # module -> its source file in the environment
_file_hashes: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256


@functools.lru_cache(maxsize=1024)
def _split_target(name: str, target: str | tuple) -> tuple[str, str]:
    """(module, attribute) of `module.path:function`; cached, as every call of a tool asks."""
    if isinstance(target, str) and target.count(":") == 1:
        module_name, attr = target.split(":")
        if all(p.isidentifier() for p in module_name.split(".")) and all(
            p.isidentifier() for p in attr.split(".")
        ):
            return module_name, attr
    raise ToolError(
        f"tool {name}: python target {target!r} is not of the form module.path:function",
        tool=name,
    )


@functools.lru_cache(maxsize=256)
def _resolved_dir(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _beside_spec_file(spec_dir: Path, module_name: str) -> Path | None:
    parts = module_name.split(".")
    base = spec_dir.joinpath(*parts[:-1])
    for candidate in (base / f"{parts[-1]}.py", base / parts[-1] / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _environment_file(module_name: str) -> Path | None:
    if module_name not in _env_files:
        origin = None
        try:
            found = importlib.util.find_spec(module_name)
        except Exception:  # a missing or broken parent package
            found = None
        if found is not None and found.has_location and found.origin:
            origin = Path(found.origin)
        _env_files[module_name] = origin
    return _env_files[module_name]


def _environment_module_exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except Exception:
        return False


def _fingerprint(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    found = _file_hashes.get(key)
    if found is None:
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        _file_hashes[key] = found
    return found


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles from source every time: no `.pyc` is read or written beside a spec, so an edit
    within the same second as the last load is never hidden by stale bytecode."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def _spec_package(spec_dir: Path) -> str:
    """The private package whose `__path__` is the spec directory (created once)."""
    key = str(spec_dir)
    name = _spec_packages.get(key)
    if name is None:
        name = "_agentflow_spec_" + hashlib.sha256(key.encode()).hexdigest()[:16]
        if name not in sys.modules:
            mspec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            mspec.submodule_search_locations = [key]
            sys.modules[name] = importlib.util.module_from_spec(mspec)
        _spec_packages[key] = name
    return name


def _exec_new_module(mspec: importlib.machinery.ModuleSpec) -> ModuleType:
    module = importlib.util.module_from_spec(mspec)
    previous = sys.modules.get(mspec.name)
    sys.modules[mspec.name] = module
    try:
        if mspec.loader is not None:
            mspec.loader.exec_module(module)
    except BaseException:
        if previous is not None:
            sys.modules[mspec.name] = previous
        else:
            sys.modules.pop(mspec.name, None)
        raise
    parent, _, child = mspec.name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _file_spec(name: str, path: Path, package_dir: Path | None) -> importlib.machinery.ModuleSpec:
    loader = _SourceOnlyLoader(name, str(path))
    locations = [str(package_dir)] if package_dir is not None else None
    mspec = importlib.util.spec_from_file_location(
        name, path, loader=loader, submodule_search_locations=locations
    )
    assert mspec is not None
    return mspec


def _load_beside_spec(spec_dir: Path, module_name: str, source: Path) -> ModuleType:
    root = _spec_package(spec_dir)
    parts = module_name.split(".")
    for i in range(1, len(parts)):  # parent packages, loaded once
        name = root + "." + ".".join(parts[:i])
        if name in sys.modules:
            continue
        pkg_dir = spec_dir.joinpath(*parts[:i])
        init = pkg_dir / "__init__.py"
        if init.is_file():
            _exec_new_module(_file_spec(name, init, pkg_dir))
        else:  # a plain directory: a namespace-like package
            mspec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            mspec.submodule_search_locations = [str(pkg_dir)]
            _exec_new_module(mspec)
    full = root + "." + module_name
    package_dir = source.parent if source.name == "__init__.py" else None
    return _exec_new_module(_file_spec(full, source, package_dir))


def _load_module(spec: ToolSpec, spec_dir: Path, module_name: str) -> ModuleType:
    """Resolve and cache a tool's module. Call with `_load_lock` held."""
    key = (str(spec_dir), module_name)
    source = _beside_spec_file(spec_dir, module_name)
    cached = _modules.get(key)
    if source is not None:
        fingerprint = _fingerprint(source)
        if cached is not None and cached[1] == fingerprint:
            return cached[0]
        try:
            module = _load_beside_spec(spec_dir, module_name, source)
        except Exception as exc:
            text = str(exc).replace(_spec_package(spec_dir) + ".", "")
            raise ToolError(
                f"tool {spec.name}: importing python module {module_name} from {source} "
                f"failed: {type(exc).__name__}: {text}",
                tool=spec.name,
            ) from exc
        _modules[key] = (module, fingerprint)
        return module
    if cached is not None and cached[1] is None:
        return cached[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            relative = "/".join(module_name.split("."))
            raise ToolError(
                f"tool {spec.name}: cannot find python module {module_name} (looked for "
                f"{relative}.py and {relative}/__init__.py in the spec's directory "
                f"{spec_dir}, then on the Python path)",
                tool=spec.name,
            ) from exc
        raise ToolError(
            f"tool {spec.name}: importing python module {module_name} failed: "
            f"ModuleNotFoundError: {exc}",
            tool=spec.name,
        ) from exc
    except Exception as exc:
        raise ToolError(
            f"tool {spec.name}: importing python module {module_name} failed: "
            f"{type(exc).__name__}: {exc}",
            tool=spec.name,
        ) from exc
    _modules[key] = (module, None)
    return module


def _is_fresh(spec_dir: Path, module_name: str) -> ModuleType | None:
    """The cached module when it can be used without loading anything, else None.

    The source file is looked at again at most every FRESHNESS_S: a fan-out of thousands
    of calls must not pay a few stat calls each, and an edit is still seen promptly."""
    key = (str(spec_dir), module_name)
    cached = _modules.get(key)
    if cached is None:
        return None
    module, fingerprint = cached
    now = time.monotonic()
    if now - _checked_at.get(key, -FRESHNESS_S) < FRESHNESS_S:
        return module
    source = _beside_spec_file(spec_dir, module_name)
    if fingerprint is None:
        fresh = module if source is None else None
    else:
        fresh = module if source is not None and _fingerprint(source) == fingerprint else None
    if fresh is not None:
        _checked_at[key] = now
    return fresh


def _resolve_attr(spec: ToolSpec, module: ModuleType, module_name: str, attr: str) -> Callable:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or module_name
            raise ToolError(
                f"tool {spec.name}: python module {module_name} ({where}) has no "
                f"function {attr}",
                tool=spec.name,
            ) from None
    if not callable(obj):
        raise ToolError(
            f"tool {spec.name}: {module_name}:{attr} is a {type(obj).__name__}, not a function",
            tool=spec.name,
        )
    return obj


class _ToolThreads:
    """Runs blocking tool functions on worker threads, off the event loop.

    Unlike `asyncio.to_thread`, no concurrent.futures.Future is chained per call, and
    finished calls go back to their loop in batches: one wake-up for every call that
    finished since the last. A trivial call then costs ~15 µs instead of ~65 µs, which is
    most of the scheduler's cost in a fan-out of small python tools. Threads start as
    calls need them, up to `max_threads`, and are daemons: a call that outlived its
    timeout cannot keep the process alive."""

    def __init__(self, max_threads: int) -> None:
        self._max_threads = max_threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._outstanding = 0  # submitted, not yet finished
        self._finished: dict[asyncio.AbstractEventLoop, list] = {}

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._outstanding += 1
            if self._outstanding > self._threads and self._threads < self._max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name="agentflow-tool", daemon=True).start()
        self._jobs.put((loop, future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            loop, future, fn, args, kwargs = self._jobs.get()
            try:
                outcome = (True, fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = (False, exc)
            with self._lock:
                self._outstanding -= 1
                finished = self._finished.setdefault(loop, [])
                finished.append((future, outcome))
                first = len(finished) == 1
            if first:
                try:
                    loop.call_soon_threadsafe(self._deliver, loop)
                except RuntimeError:  # the loop is closed: nobody awaits these any more
                    with self._lock:
                        self._finished.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            finished = self._finished.pop(loop, [])
        for future, (ok, value) in finished:
            if not future.done():  # else cancelled, e.g. by the tool's timeout
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


_tool_threads = _ToolThreads(max_threads=32)


async def _python_function(spec: ToolSpec, ctx: ToolContext) -> Callable:
    module_name, attr = _split_target(spec.name, spec.target)
    spec_dir = _resolved_dir(ctx.spec_dir)
    module = _is_fresh(spec_dir, module_name)
    if module is None:

        def load() -> ModuleType:
            with _load_lock:
                return _load_module(spec, spec_dir, module_name)

        module = await _tool_threads.run(load)
    return _resolve_attr(spec, module, module_name, attr)


def _raised(spec: ToolSpec, exc: BaseException) -> ToolError:
    text = str(exc)
    message = f"tool {spec.name} raised {type(exc).__name__}" + (f": {text}" if text else "")
    transient = isinstance(exc, (TimeoutError, ConnectionError))
    return (TransientToolError if transient else ToolError)(message, tool=spec.name)


def _timeout_s(spec: ToolSpec) -> float:
    return DEFAULT_TIMEOUT_S if spec.timeout_s is None else spec.timeout_s


def _timed_out(spec: ToolSpec) -> TransientToolError:
    hint = " (the default timeout; set `timeout` on the tool to allow more)" if spec.timeout_s is None else ""
    return TransientToolError(
        f"tool {spec.name} timed out after {_timeout_s(spec):g}s{hint}", tool=spec.name
    )


async def _with_timeout(spec: ToolSpec, awaitable: Any) -> Any:
    try:
        return await asyncio.wait_for(awaitable, _timeout_s(spec))
    except TimeoutError:
        raise _timed_out(spec) from None


async def _call_python(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    fn = await _python_function(spec, ctx)

    async def invoke() -> Any:
        # Exceptions of the function become ToolErrors here, so that a TimeoutError the
        # function raises is not mistaken for our own timeout below.
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await _tool_threads.run(fn, **args)
                if inspect.isawaitable(result):
                    result = await result
        except ToolError:
            raise
        except (Exception, SystemExit) as exc:
            raise _raised(spec, exc) from exc
        return result

    # A sync function that times out keeps running in its worker thread (threads cannot be
    # killed); its result is discarded.
    result = await _with_timeout(spec, invoke())
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


def _fail(spec: ToolSpec, text: str, cls: type[ToolError] = ToolError) -> ToolError:
    """A ToolError whose message names the tool: `tool NAME: text`."""
    return cls(f"tool {spec.name}: {text}", tool=spec.name)


def _at(where: str) -> str:
    return f" at result{where}" if where else ""


# --------------------------------------------------------------------------------------------
# Command tools


def _workspace(ctx: ToolContext) -> Path:
    workspace = Path(ctx.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace.resolve()


async def _call_command(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    template = [spec.target] if isinstance(spec.target, str) else list(spec.target)
    try:
        argv = [render_template(element, args) for element in template]
    except TemplateError as exc:
        raise _fail(spec, str(exc)) from None
    if not argv or not argv[0]:
        raise _fail(spec, "the command is empty")

    workspace = _workspace(ctx)
    cwd = workspace
    if spec.cwd:
        cwd = _confine(spec, workspace, spec.cwd)
        if not cwd.is_dir():
            raise ToolError(
                f"tool {spec.name}: working directory {spec.cwd} does not exist in the workspace",
                tool=spec.name,
            )

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole on timeout
        )
    except FileNotFoundError:
        raise _fail(spec, f"executable not found: {argv[0]}") from None
    except PermissionError:
        raise _fail(spec, f"cannot execute {argv[0]} (permission denied)") from None
    except OSError as exc:
        transient = exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
        cls = TransientToolError if transient else ToolError
        raise _fail(spec, f"cannot start {argv[0]}: {exc.strerror or exc}", cls) from None
    except ValueError as exc:  # a NUL or an unencodable character in an argument
        raise _fail(spec, f"cannot start {argv[0]!r}: {exc}") from None

    assert proc.stdout is not None and proc.stderr is not None, "both are pipes"
    output = asyncio.gather(_read_head(proc.stdout, OUTPUT_CAP_BYTES),
                            _read_tail(proc.stderr, _STDERR_TAIL * 4), proc.wait())
    output.add_done_callback(_retrieve)  # a timeout or a signal cancels it: nobody else looks
    try:
        (stdout, cut), stderr, _ = await asyncio.wait_for(output, _timeout_s(spec))
    except TimeoutError:
        await _kill(proc)
        raise _timed_out(spec) from None
    except BaseException:  # cancelled: leave no process behind
        await _kill(proc)
        raise

    if proc.returncode != 0:
        tail = stderr.decode("utf-8", errors="replace")[-_STDERR_TAIL:]
        status = proc.returncode
        if status is not None and status < 0:
            try:
                how = f"was killed by signal {signal.Signals(-status).name}"
            except ValueError:
                how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        detail = f"; stderr:\n{tail}" if tail.strip() else " (no stderr output)"
        raise ToolError(
            f"tool {spec.name} {how}{detail}", tool=spec.name, exit_status=status, stderr=tail
        )

    text = stdout.decode("utf-8", errors="replace")
    if spec.returns_str:
        return text + (f"\n[... {cut} bytes cut ...]" if cut else "")
    if cut:
        raise _fail(spec, f"printed {len(stdout) + cut} bytes, more than the {OUTPUT_CAP_BYTES} a tool may "
                          f"return, and JSON output cannot be cut")
    return _parse_json_output(spec, text)


def _retrieve(future: asyncio.Future) -> None:
    """Marks a future's exception as seen, so asyncio does not print it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _read_head(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, int]:
    """The first `cap` bytes of a stream, and how many bytes after them were read and dropped
    (read to the end all the same, so the writer never blocks on a full pipe)."""
    head = bytearray()
    cut = 0
    while chunk := await stream.read(1 << 16):
        room = cap - len(head)
        head += chunk[:room]
        cut += max(0, len(chunk) - room)
    return bytes(head), cut


async def _read_tail(stream: asyncio.StreamReader, cap: int) -> bytes:
    """The last `cap` bytes of a stream (read to the end)."""
    tail = bytearray()
    while chunk := await stream.read(1 << 16):
        tail += chunk
        del tail[:-cap]
    return bytes(tail)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json_output(spec: ToolSpec, text: str) -> Any:
    if not text.strip():
        raise ToolError(
            f"tool {spec.name} printed nothing; expected JSON on stdout", tool=spec.name
        )
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        start = text[:_OUTPUT_QUOTE] + ("..." if len(text) > _OUTPUT_QUOTE else "")
        raise ToolError(
            f"tool {spec.name} printed output that is not valid JSON ({reason}); "
            f"it starts with: {start!r}",
            tool=spec.name,
        ) from None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the process and its process group, then reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    else:
        try:  # the leader is gone; children it left in its group still get killed
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        pass


# --------------------------------------------------------------------------------------------
# Builtins: files confined to the workspace


def _confine(spec: ToolSpec, workspace: Path, raw: str) -> Path:
    """The resolved path of `raw` inside the (resolved) workspace, or a ToolError.

    Symlinks are followed by `resolve()`, so a link inside the workspace that points outside
    is refused like `..` or an absolute path. Nothing is created here.
    """
    try:
        resolved = (workspace / raw).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise _fail(spec, f"cannot resolve path {raw}: {exc}") from None
    if not resolved.is_relative_to(workspace):
        raise ToolError(f"path {raw} is outside the workspace", tool=spec.name)
    return resolved


def _path_arg(spec: ToolSpec, args: dict, default: str | None) -> str:
    name = spec.params[0] if spec.params else None
    value = args.get(name) if name is not None else None
    if value is None:
        if default is None:
            raise _fail(spec, f"missing argument {name or 'path'}")
        return default
    if not isinstance(value, str):
        raise ToolError(
            f"tool {spec.name}: argument {name} must be a string path, not {_kind(value)}",
            tool=spec.name,
        )
    if "\x00" in value:
        raise _fail(spec, f"path {value!r} contains a NUL character")
    return value


def _relative(workspace: Path, path: Path) -> str:
    rel = path.relative_to(workspace).as_posix()
    return rel if rel != "." else "."


def _fs_read(spec: ToolSpec, args: dict, ctx: ToolContext) -> str:
    raw = _path_arg(spec, args, None)
    workspace = _workspace(ctx)
    target = _confine(spec, workspace, raw)
    if target.is_dir():
        raise _fail(spec, f"{raw} is a directory, not a file")
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise _fail(spec, f"no such file: {raw}") from None
    except OSError as exc:
        raise _fail(spec, f"cannot read {raw}: {exc.strerror or exc}") from None
    return data.decode("utf-8", errors="replace")


def _fs_write(spec: ToolSpec, args: dict, ctx: ToolContext) -> str:
    raw = _path_arg(spec, args, None)
    content_name = spec.params[1] if len(spec.params) > 1 else None
    content = args.get(content_name, "") if content_name is not None else ""
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ToolError(
            f"tool {spec.name}: argument {content_name} must be a string, not {_kind(content)}",
            tool=spec.name,
        )
    workspace = _workspace(ctx)
    target = _confine(spec, workspace, raw)
    if target == workspace or target.is_dir():
        raise _fail(spec, f"{raw} is a directory, not a file")
    data = content.encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after creating directories, in case the tree changed in between.
        _confine(spec, workspace, str(target.parent))
        target.write_bytes(data)
    except OSError as exc:
        raise _fail(spec, f"cannot write {raw}: {exc.strerror or exc}") from None
    return f"wrote {len(data)} bytes to {_relative(workspace, target)}"


def _fs_list(spec: ToolSpec, args: dict, ctx: ToolContext) -> list[str]:
    raw = _path_arg(spec, args, ".")
    workspace = _workspace(ctx)
    target = _confine(spec, workspace, raw)
    if not target.exists():
        raise _fail(spec, f"no such directory: {raw}")
    if not target.is_dir():
        raise _fail(spec, f"{raw} is not a directory")
    entries = []
    try:
        for child in target.iterdir():
            rel = child.relative_to(workspace).as_posix()
            entries.append(rel + "/" if child.is_dir() else rel)
    except OSError as exc:
        raise _fail(spec, f"cannot list {raw}: {exc.strerror or exc}") from None
    return sorted(entries)


_BUILTINS: dict[str, Callable[[ToolSpec, dict, ToolContext], Any]] = {
    "fs.read": _fs_read,
    "fs.write": _fs_write,
    "fs.list": _fs_list,
}


async def _call_builtin(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    fn = _BUILTINS.get(str(spec.target))
    if fn is None:
        known = ", ".join(BUILTIN_TOOLS)
        raise ToolError(
            f"tool {spec.name}: unknown builtin {spec.target!r} (known: {known})", tool=spec.name
        )
    # A FIFO in the workspace blocks a read forever: builtins have a timeout too.
    return await _with_timeout(spec, _tool_threads.run(_os_errors_as_tool_errors, fn, spec, args, ctx))


def _os_errors_as_tool_errors(fn: Callable, spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    """Run a builtin; an OS failure the builtin did not explain itself (a name too long, a
    path that cannot be encoded as a file name) is still the tool's error, not the run's."""
    try:
        return fn(spec, args, ctx)
    except (OSError, ValueError) as exc:
        raw = args.get(spec.params[0]) if spec.params else None
        where = f" {_shown_path(raw)}" if isinstance(raw, str) else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _fail(spec, f"cannot use path{where}: {reason}") from None


def _shown_path(raw: str) -> str:
    """A path for a message: long ones are shortened (the OS limit is 4,096 bytes)."""
    if len(raw) <= _PATH_QUOTE:
        return raw
    return f"{raw[:_PATH_QUOTE]}... ({len(raw.encode('utf-8', 'surrogatepass'))} bytes)"


@contextlib.contextmanager
def prints_to_stderr() -> Iterator[None]:
    """While active, whatever tools print (print(), a C library, a child process that
    inherits file descriptor 1) goes to stderr, so stdout carries only the run's result.

    File descriptor 1 itself is pointed at stderr, for every thread at once (tools run on
    worker threads), and `sys.stdout` follows it; both are restored on exit."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield
        return
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
