"""Reads shared between requests, so the number of pages open does not set how often the
writer is asked to let go of the database: each distinct read runs at most once per
`interval`, and requests arriving meanwhile (or while it runs) get its answer."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable

# The page polls every second. Each read makes a writer let go of the file and attach it
# again (~0.1 s of its time on a busy run, measured): one view read a second, however many
# pages show it, costs a run of fast calls ~15% and a run waiting on models nothing.
READ_INTERVAL_S = 1.0
KEEP = 256  # answers kept (runs, run views, nodes, drawings); the oldest go first


class Throttled:
    """`fn(*args)` memoized per args for `interval` seconds; thread-safe, one call at a time per args."""

    def __init__(self, fn: Callable[..., Any], interval: float = READ_INTERVAL_S) -> None:
        self.fn = fn
        self.interval = interval
        self.answers: dict[Hashable, tuple[float, Any]] = {}
        self.locks: dict[Hashable, threading.Lock] = {}
        self.mu = threading.Lock()

    def __call__(self, *args: Hashable) -> Any:
        with self.mu:
            lock = self.locks.setdefault(args, threading.Lock())
        with lock:
            found = self.answers.get(args)
            if found is not None and time.monotonic() - found[0] < self.interval:
                return found[1]
            value = self.fn(*args)
            with self.mu:
                self.answers[args] = (time.monotonic(), value)
                while len(self.answers) > KEEP:
                    oldest = next(iter(self.answers))
                    del self.answers[oldest]
                    self.locks.pop(oldest, None)
            return value
