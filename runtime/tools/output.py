"""What tools print goes to stderr, so stdout carries only the run's result."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


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
