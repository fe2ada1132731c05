"""Ending a process that imported litellm (or ran no user code) without the interpreter's teardown.

At exit CPython frees every module's objects one by one; after `import litellm` that is some
400,000 objects: ~1 s of CPU (several seconds on a busy machine) spent after the run's result
is printed and stored, for nothing anyone can observe. `exit_without_teardown` keeps what a
normal exit does that can be observed, in the same order: it waits for non-daemon threads,
runs the `atexit` handlers (users' tools may register some; litellm flushes its logging),
flushes every file still open for writing (stdout and stderr, and a file a tool left open,
which the teardown would have flushed when freeing it), then ends the process with
`os._exit`. What is not run: `__del__` methods and weakref callbacks of objects alive at
exit."""
from __future__ import annotations

import atexit
import gc
import io
import os
import sys
import threading
from typing import NoReturn


class ExitWithoutTeardown(SystemExit):
    """`sys.exit` for a command whose teardown would only free agentflow's own modules (a
    no-op rerun, which runs no user code): ~50-80 ms of a process that takes a few hundred."""


def exit_without_teardown(code: object) -> NoReturn:
    """End the process as `sys.exit(code)` would, minus the teardown walk. Call it only from
    the main thread, once everything the process writes (the store) is closed."""
    status = exit_status(code)
    # The first two steps of Py_FinalizeEx; both are the interpreter's own (private) entry
    # points, as nothing public runs them.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    flush_open_files()
    os._exit(status)


# What `open()` returns for writing: a text file wraps a buffered writer; both may hold data.
_WRITABLE_FILES = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def flush_open_files() -> None:
    """Flush every file object still open for writing, stdout and stderr last: one pass over
    the collector's objects (~0.05 s after litellm's import, not the teardown's ~1 s)."""
    streams = [sys.stdout, sys.stderr]
    files = [obj for obj in gc.get_objects() if type(obj) in _WRITABLE_FILES and obj not in streams]
    for file in files + streams:
        try:
            if not file.closed:
                file.flush()
        except (OSError, ValueError):  # a reader that went away, a file closed meanwhile: as at a normal exit
            pass


def exit_status(code: object) -> int:
    """The exit status of `sys.exit(code)`: None is 0, an int is itself, anything else is
    printed on stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
