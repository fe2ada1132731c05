"""Compiled plans kept on disk, so that compiling an unchanged spec again costs a file read.

A compilation is a pure function of the spec's name and text, the entry choreography and the
compiler itself (its modules, its grammar, the lark it parses with, the Python that runs it).
Those are the key: any change to one compiles afresh. Only compilations without errors are
kept (their plan, its hash, graph and warnings); a spec with errors is compiled every time, so
its diagnostics always come from the compiler.

The cache is a directory of one file per key: `$AGENTFLOW_CACHE_DIR/plans`, else
`$XDG_CACHE_HOME/agentflow/plans`, else `~/.cache/agentflow/plans`; `AGENTFLOW_PLAN_CACHE=0`
turns it off. It is an optimisation and never a failure: a directory that cannot be written,
or a file that cannot be read back (truncated, from another version, not the user's own), is
a miss. Files are pickles, so one is only loaded if it belongs to the user and nobody else
may write it; the directory keeps the most recently used MAX_ENTRIES plans.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path

from agentflow.grammar import GRAMMAR_PATH

from .compiled import Plan
from .pipeline import Compilation, collector_paused, compile_source
from .source import SourceFile

MAX_ENTRIES = 64  # plans kept; the oldest used go first
FORMAT = 2  # of the files: a new one makes old files misses


def compile_cached(source: SourceFile, entry: str | None = None) -> Compilation:
    """What `compile_source` returns, read from the cache when the same spec compiled before
    (then without the AST and symbols, which only the compiler's own phases use)."""
    directory = cache_directory()
    if directory is None:
        return compile_source(source, entry)
    path = directory / f"{_key(source, entry)}.pickle"
    cached = _load(path, source)
    if cached is not None:
        return cached
    compilation = compile_source(source, entry)
    if compilation.plan is not None:
        _store(path, compilation)
    return compilation


def cache_directory() -> Path | None:
    """Where plans are kept, or None when the cache is off."""
    if os.environ.get("AGENTFLOW_PLAN_CACHE", "").strip().lower() in ("0", "off", "false", "no"):
        return None
    if base := os.environ.get("AGENTFLOW_CACHE_DIR"):
        return Path(base) / "plans"
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "agentflow" / "plans"
    home = os.path.expanduser("~")
    if not os.path.isabs(home):  # no home directory known: no cache, rather than one in `./~`
        return None
    return Path(home) / ".cache" / "agentflow" / "plans"


def _key(source: SourceFile, entry: str | None) -> str:
    h = hashlib.sha256(compiler_fingerprint().encode())
    for part in (source.name, entry or "", source.text):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """The compiler's identity: the bytes of its modules and grammar, the lark it parses with
    (its location, size and time, without importing it) and the Python that runs it."""
    h = hashlib.sha256(f"{FORMAT} {sys.version}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")) + [GRAMMAR_PATH]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    lark = importlib.util.find_spec("lark")
    if lark is not None and lark.origin:
        info = os.stat(lark.origin)
        h.update(f"{lark.origin} {info.st_size} {info.st_mtime_ns}".encode())
    return h.hexdigest()


def _load(path: Path, source: SourceFile) -> Compilation | None:
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return None
            with collector_paused():  # a 10k-step plan: 0.07 s, not 0.3 s of collector passes
                data, parts, diagnostics, plan_hash = pickle.load(f)
        os.utime(path)  # recently used: kept longest
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged or foreign file is a miss, and goes
        _remove(path)
        return None
    return Compilation(source, diagnostics, plan=Plan(data, parts, plan_hash))


def _store(path: Path, compilation: Compilation) -> None:
    assert compilation.plan is not None
    plan = compilation.plan
    record = (plan.data, plan.parts, compilation.diagnostics, plan.plan_hash)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # whole or not at all: a reader never sees half a file
        except BaseException:
            _remove(Path(tmp))
            raise
        _prune(path.parent)
    except OSError:
        pass  # a cache that cannot be written is only slower


def _prune(directory: Path) -> None:
    """Keeps the MAX_ENTRIES most recently used plans."""
    entries = []
    for path in directory.glob("*.pickle"):
        try:
            entries.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    for _, path in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
