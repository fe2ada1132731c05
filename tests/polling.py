"""Waiting for something a real subprocess or server will do, within a deadline."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.1, what: str = "") -> Any:
    """The first truthy value of `predicate()`, polled every `interval`; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)
