"""Progress on stderr: a live rich display on a terminal, summary lines otherwise.

Both show the same `Tally`: nodes done out of the total expected, failed, running, the
percent and an ETA. The total starts as the plan's node count (a sub-choreography's body
included, a `for` body not) and grows as fan-outs expand and `repeat` iterations begin.
Failures are printed as they happen, one line each, with the node id and the error."""
from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from typing import TextIO

from agentflow.compiler.names import template_id

# Seconds between summary lines without a terminal (AGENTFLOW_PROGRESS_INTERVAL overrides).
SUMMARY_INTERVAL_S = 5.0
_FOR_ITEMS = re.compile(r"(\d+) items?$")  # the detail of a `for` node's `running` event
_ITERATION = re.compile(r"#(\d+)$")


def summary_interval() -> float:
    """The summary interval: SUMMARY_INTERVAL_S, or AGENTFLOW_PROGRESS_INTERVAL seconds."""
    try:
        return max(0.0, float(os.environ.get("AGENTFLOW_PROGRESS_INTERVAL", SUMMARY_INTERVAL_S)))
    except ValueError:
        return SUMMARY_INTERVAL_S


def scope_sizes(plan: dict) -> dict[str, int]:
    """Scope template -> the nodes one instance of it holds, with the bodies of the
    sub-choreographies and `repeat`s (first iteration) inside it, but no `for` body."""
    members: dict[str, list[tuple[str, dict]]] = {}
    for tid, node in plan["nodes"].items():
        members.setdefault(node.get("scope") or plan["entry"], []).append((tid, node))
    sizes: dict[str, int] = {}

    def size(scope: str) -> int:
        if scope not in sizes:
            sizes[scope] = sum(1 + (size(body_scope(tid, node)) if node["kind"] in ("choreography", "repeat") else 0)
                               for tid, node in members.get(scope, ()))
        return sizes[scope]

    for scope in list(members):
        size(scope)
    return sizes


def body_scope(tid: str, node: dict) -> str:
    """The scope template of a structure node's body (`X[*]`, `X#*`, or `X` itself)."""
    return {"for": tid + "[*]", "repeat": tid + "#*"}.get(node["kind"], tid)


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Tally:
    """What a run has done so far, from its node events."""

    def __init__(self, plan: dict | None = None) -> None:
        self.nodes: dict[str, dict] = plan["nodes"] if plan else {}
        self.sizes = scope_sizes(plan) if plan else {}
        self.total = self.sizes.get(plan["entry"], 0) if plan else 0
        self.counts: Counter[str] = Counter()  # succeeded, reused, failed, skipped, cancelled
        self.running: dict[str, None] = {}  # insertion-ordered: the newest last
        self.iterations: set[str] = set()  # `repeat` iterations counted in the total
        self.started = time.monotonic()

    def record(self, node_id: str, status: str, cached: bool, detail: str) -> None:
        tid = template_id(node_id)
        node = self.nodes.get(tid)
        if "#" in node_id:
            self._count_iterations(node_id)
        if status == "running":
            self.running[node_id] = None
            if node is not None and node["kind"] == "for" and (m := _FOR_ITEMS.match(detail)):
                self.total += int(m.group(1)) * self.sizes.get(tid + "[*]", 0)
            return
        self.running.pop(node_id, None)
        self.counts["reused" if cached else status] += 1
        if node is None:  # a delegated call: not in the plan, counted as it ends
            self.total += 1
        elif status == "skipped" and node["kind"] in ("choreography", "repeat"):
            self.total -= self.sizes.get(body_scope(tid, node), 0)

    def _count_iterations(self, node_id: str) -> None:
        """The body of each `repeat` iteration after the first, when its first node shows up."""
        parts = node_id.split("/")
        for i, part in enumerate(parts[:-1]):
            m = _ITERATION.search(part)
            if m and int(m.group(1)) > 1:
                prefix = "/".join(parts[:i + 1])
                if prefix not in self.iterations:
                    self.iterations.add(prefix)
                    self.total += self.sizes.get(template_id(prefix), 0)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far, or None before anything finished."""
        done, total = self.done, max(self.total, self.done)
        if done == 0:
            return None
        return (time.monotonic() - self.started) / done * (total - done)

    def status_text(self) -> str:
        """`120/2003 done (6%), 1 failed, 16 running, eta 1m20s`."""
        done, total = self.done, max(self.total, self.done)
        eta = self.eta_s()
        return (f"{done}/{total} done ({100 * done // max(total, 1)}%), {self.counts['failed']} failed, "
                f"{len(self.running)} running, eta {'?' if eta is None else format_duration(eta)}")

    def summary(self) -> str:
        """The final line: nodes by outcome (`    nodes  3 reused, 2 succeeded`)."""
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"    nodes  {counts}" if counts else ""


def failure_line(node_id: str, detail: str) -> str:
    """`   failed  main/x (the error)`: the format plain progress has always had (users grep it)."""
    return f"   failed  {node_id} ({detail})" if detail else f"   failed  {node_id}"


class PlainReporter:
    """Without a terminal: each failure as it happens, a summary line when a node event
    comes `interval` seconds or more after the last line, and a final summary; not one line
    per node. Lines follow events (no timer): a run that waits on a slow call stays quiet."""

    def __init__(self, stream: TextIO = sys.stderr, plan: dict | None = None,
                 interval: float | None = None) -> None:
        self.stream = stream
        self.tally = Tally(plan)
        self.interval = summary_interval() if interval is None else interval
        self._last = time.monotonic()

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        self.tally.record(node_id, status, cached, detail)
        if status == "failed":
            self._write(failure_line(node_id, detail))
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(f" progress  {self.tally.status_text()}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if summary := self.tally.summary():
            self._write(summary)


class LiveReporter:
    """On a terminal: a rich live display (a bar, the status text and the newest running
    nodes), refreshed a few times a second from the tally; failures print above it."""

    SHOWN_RUNNING = 5

    def __init__(self, stream: TextIO = sys.stderr, plan: dict | None = None) -> None:
        from rich.console import Console
        from rich.live import Live
        self.tally = Tally(plan)
        self.console = Console(file=stream)
        self.live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4)
        self.live.start()

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text
        tally = self.tally
        table = Table.grid(padding=(0, 1))
        bar = ProgressBar(total=max(tally.total, tally.done, 1), completed=tally.done, width=30)
        table.add_row(Text("agentflow"), bar, Text(tally.status_text()))
        for node_id in list(tally.running)[-self.SHOWN_RUNNING:]:
            table.add_row(Text(""), Text("running", style="cyan", justify="right"), Text(node_id))
        return table

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        self.tally.record(node_id, status, cached, detail)
        if status == "failed":
            from rich.text import Text
            self.console.print(Text(failure_line(node_id, detail), style="red"))
            self.live.refresh()  # the frame under the line shows the failure counted

    def close(self) -> None:
        self.live.refresh()
        self.live.stop()
        if summary := self.tally.summary():
            self.console.print(summary, markup=False, highlight=False)


def reporter_for(stream: TextIO = sys.stderr, plan: dict | None = None) -> PlainReporter | LiveReporter:
    return LiveReporter(stream, plan) if stream.isatty() else PlainReporter(stream, plan)


class SilentReporter:
    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        pass

    def close(self) -> None:
        pass
