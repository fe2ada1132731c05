"""The compiler pipeline, in one place: source -> AST -> symbols -> checks -> plan.

Each phase reports into one sink; a phase that found errors stops the pipeline, so a
typo does not cascade into twenty messages.
"""
from __future__ import annotations

import errno
import gc
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from .compiled import Plan
from .diagnostics import Diagnostic, DiagnosticSink, render_text, sorted_diagnostics, to_json_obj
from .errors import EXIT_COMPILE, AgentflowError, UsageError
from .source import SourceFile

if TYPE_CHECKING:
    from . import ast
    from .symbols import Symbols

MAX_SOURCE_BYTES = 10 * 1024 * 1024


class SourceError(UsageError):
    """A spec that cannot be read at all (missing, a directory, not UTF-8, too large)."""


class CompileError(AgentflowError):
    """A spec with compile errors (exit 1), for callers of the Python API: the diagnostics
    stay data (`diagnostics`, `to_json()`), `render()` is what `agentflow compile` prints."""

    exit_code = EXIT_COMPILE

    def __init__(self, compilation: "Compilation") -> None:
        self.source = compilation.source
        self.diagnostics = compilation.diagnostics
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0]
        where = first.primary.span
        more = f" (and {len(errors) - 1} more error{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        super().__init__(f"{where.file}:{where.line}:{where.column}: error[{first.code}]: {first.message}{more}")

    def render(self) -> str:
        """The diagnostics as rustc-style text, with the source lines they point at."""
        return render_text(self.diagnostics, {self.source.name: self.source})

    def to_json(self) -> dict:
        """The diagnostics as `agentflow compile --format json` prints them."""
        return to_json_obj(self.diagnostics)


@dataclass(frozen=True)
class Compilation:
    source: SourceFile
    diagnostics: tuple[Diagnostic, ...]
    program: ast.Program | None = None
    symbols: Symbols | None = None
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None


def read_source(path: str | Path, display_name: str | None = None) -> SourceFile:
    """Reads a spec as UTF-8 text, or raises SourceError with a message a user can act on.
    Only a regular file is read, and never more than the size limit: a device such as
    /dev/zero or a FIFO would otherwise be read forever or block."""
    name = display_name or str(path)
    try:
        with open(path, "rb", opener=_open_nonblocking) as f:
            info = os.fstat(f.fileno())  # (a directory fails to open: EISDIR)
            if not stat.S_ISREG(info.st_mode):
                raise SourceError(f"{name}: not a regular file; give the path of an .agentflow file")
            _check_size(name, info.st_size)
            data = f.read(MAX_SOURCE_BYTES + 1)
    except OSError as err:
        raise SourceError(f"{name}: {_os_error_words(err)}") from None
    _check_size(name, len(data))  # it may have grown since the stat
    if b"\0" in data:
        raise SourceError(f"{name}: looks like a binary file, not an .agentflow spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{name}: not valid UTF-8 (byte {err.start}); save the file as UTF-8") from None
    return SourceFile(name, text.removeprefix("\ufeff"))


def _open_nonblocking(path: str, flags: int) -> int:
    """Opens without blocking: opening a FIFO for reading waits for a writer otherwise."""
    return os.open(path, flags | os.O_NONBLOCK)


def _check_size(name: str, size: int) -> None:
    if size > MAX_SOURCE_BYTES:
        raise SourceError(f"{name}: file is {size / 1e6:.1f} MB; specs are limited to "
                          f"{MAX_SOURCE_BYTES // (1024 * 1024)} MB")


def _os_error_words(err: OSError) -> str:
    """What went wrong opening a spec, in words a user can act on."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    if err.errno == errno.ENAMETOOLONG:
        return "path too long (at most 255 bytes per file or directory name); shorten it"
    if err.errno == errno.EISDIR:
        return "is a directory, not an .agentflow file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; make the file readable"
    return f"cannot read it ({err.strerror or err}); check the path"


@contextmanager
def collector_paused():
    """Pauses the cyclic garbage collector. The pipeline allocates a great many objects and
    no reference cycles, so the collector's passes would only rescan them (a third of the
    compile time of a large spec). On the way out they join the oldest generation, as a
    freeze and unfreeze does without scanning them; else the next young-generation pass
    would scan them all. (Not when someone else froze objects: unfreezing is global.)"""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def compile_source(source: SourceFile, entry: str | None = None) -> Compilation:
    with collector_paused():
        return _compile(source, entry)


def _compile(source: SourceFile, entry: str | None) -> Compilation:
    # The phases load here: a plan from the plan cache needs none of them.
    from .checks import check_program
    from .parser import parse
    from .plan import build_plan
    from .symbols import collect

    sink = DiagnosticSink()

    def done(**parts) -> Compilation:
        return Compilation(source, tuple(sorted_diagnostics(sink.diagnostics)), **parts)

    program = parse(source, sink)
    if program is None or sink.has_errors:
        return done(program=program)
    symbols = collect(program, sink)
    if sink.has_errors:
        return done(program=program, symbols=symbols)
    entry_name = check_program(program, symbols, sink, entry=entry, source=source)
    if sink.has_errors or entry_name is None:
        return done(program=program, symbols=symbols)
    return done(program=program, symbols=symbols, plan=build_plan(program, symbols, entry_name, source.name))
