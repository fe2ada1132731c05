"""Finding and loading a python tool's function, and the version of its code.

A target `module.path:function` resolves beside the spec first (`<spec_dir>/module/path.py`
or `<spec_dir>/module/path/__init__.py`), then as a normal import. Modules beside a spec are
loaded under a private package name per spec directory, so two specs may each have their own
`tools/text.py`, and `sys.path` is never changed. A module beside a spec is reloaded when its
file changes (its helpers are not); environment modules are imported once per process."""
from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from agentflow.compiler.hashing import digest

from .spec import ToolContext, ToolError, ToolSpec
from .workers import tool_threads

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


async def python_function(spec: ToolSpec, ctx: ToolContext) -> Callable:
    """The function a python tool names, its module loaded (off the loop) only when stale."""
    module_name, attr = _split_target(spec.name, spec.target)
    spec_dir = _resolved_dir(ctx.spec_dir)
    module = _is_fresh(spec_dir, module_name)
    if module is None:

        def load() -> ModuleType:
            with _load_lock:
                return _load_module(spec, spec_dir, module_name)

        module = await tool_threads.run(load)
    return _resolve_attr(spec, module, module_name, attr)


def python_code_version(spec: ToolSpec, ctx: ToolContext) -> str:
    """A hash of the target and the source of the resolved module file (see `tool_code_version`)."""
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
