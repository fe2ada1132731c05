"""Crash points for crash tests: interrupt a real run exactly where its state becomes durable.

`AGENTFLOW_FAULT=SIGNAL@N` (SIGNAL one of `kill`, `int`, `term`) makes the process send
itself SIGKILL, SIGINT or SIGTERM right after its N-th commit to the run database. A test
walks N over every commit of a run to interrupt it at each journal point, which timing-based
killing cannot reach reliably. Without the variable, `after_commit` does nothing.
"""
from __future__ import annotations

import os
import signal

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
