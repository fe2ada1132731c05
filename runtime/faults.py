"""Crash points for crash tests: interrupt a real run exactly where its state becomes durable.

`AGENTFLOW_FAULT=SIGNAL@N` (SIGNAL one of `kill`, `int`, `term`) makes the process send
itself SIGKILL, SIGINT or SIGTERM right after its N-th commit point. A commit point is a
commit the run asks for: each `Store.flush()` call outside `commits_held()` (not the store's
timed commits, those a read makes first, or the one closing the store, whose moments depend on
timing, so that the N-th point is the same in every run), and, under group durability, each
point where a strict run would commit (a result, a journal step) but a group run only buffers:
stopped there, the run loses the facts not yet committed, which group durability must survive.
A test walks N over every commit point of a run to interrupt it at each journal point, which
timing-based killing cannot reach reliably. Without the variable, both hooks do nothing.
"""
from __future__ import annotations

import os
import signal
import threading
import time

SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}


def _parse(spec: str) -> tuple[signal.Signals, int] | None:
    name, _, count = spec.partition("@")
    if name not in SIGNALS or not count.isdigit() or int(count) < 1:
        return None
    return SIGNALS[name], int(count)


_FAULT = _parse(os.environ.get("AGENTFLOW_FAULT", ""))
_commits = 0


def after_commit() -> None:
    """Counts a commit; sends the configured signal at the configured one."""
    global _commits
    if _FAULT is None:
        return
    _commits += 1
    if _commits == _FAULT[1]:
        os.kill(os.getpid(), _FAULT[0])
        if threading.current_thread() is not threading.main_thread():
            # The main thread acts on SIGINT and SIGTERM: give it the time to, before this
            # commit's caller goes on (after a run's last commit it could otherwise end first).
            time.sleep(1.0)


def deferred_commit() -> None:
    """Counts a point where a strict run would commit and a group-commit run only buffers."""
    after_commit()
