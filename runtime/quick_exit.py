"""Ending a process that imported litellm without the interpreter's teardown.

At exit CPython frees every module's objects one by one; after `import litellm` that is some
400,000 objects: ~1 s of CPU (several seconds on a busy machine) spent after the run's result
is printed and stored, for nothing anyone can observe. `exit_without_teardown` keeps what a
normal exit does that can be observed, in the same order: it waits for non-daemon threads,
runs the `atexit` handlers (users' tools may register some; litellm flushes its logging),
flushes stdout and stderr, then ends the process with `os._exit`."""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_without_teardown(code: object) -> NoReturn:
    """End the process as `sys.exit(code)` would, minus the teardown walk. Call it only from
    the main thread, once everything the process writes (the store) is closed."""
    status = exit_status(code)
    # The first two steps of Py_FinalizeEx; both are the interpreter's own (private) entry
    # points, as nothing public runs them.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader that went away: as a normal exit
            pass
    os._exit(status)


def exit_status(code: object) -> int:
    """The exit status of `sys.exit(code)`: None is 0, an int is itself, anything else is
    printed on stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
