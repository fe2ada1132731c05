"""Progress on stderr: a live rich display on a terminal, plain lines otherwise."""
from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import TextIO


class PlainReporter:
    """One line per node event that matters: start, finish, reuse, failure, skip.

    Lines are buffered and written together at most `FLUSH_S` later (one write per batch,
    not one per node: a fan-out of 10k nodes would otherwise spend a syscall on each)."""

    FLUSH_S = 0.05

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self._lines: list[str] = []
        self._scheduled = False

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        if status == "running":
            return
        label = "reused" if cached else status
        self.counts[label] += 1
        suffix = f" ({detail})" if detail else ""
        self._lines.append(f"{label:>9}  {node_id}{suffix}\n")
        if status == "failed":
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
                self._scheduled = True
            except RuntimeError:  # no event loop: write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            text, self._lines = "".join(self._lines), []
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        self.flush()
        summary = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        if summary:
            print(f"    nodes  {summary}", file=self.stream, flush=True)


class LiveReporter(PlainReporter):
    """A rich live panel: counts by status and the nodes running now."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live
        self.running: dict[str, None] = {}
        self.console = Console(file=stream)
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def _render(self):
        from rich.table import Table
        table = Table.grid(padding=(0, 2))
        counts = "  ".join(f"[bold]{n}[/] {k}" for k, n in sorted(self.counts.items())) or "starting"
        table.add_row(f"agentflow  {counts}")
        for node_id in list(self.running)[-8:]:
            table.add_row(f"  [cyan]running[/]  {node_id}")
        return table

    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        label = "reused" if cached else status
        if status == "running":
            self.running[node_id] = None
        else:
            self.running.pop(node_id, None)
        if status != "running":
            self.counts[label] += 1
        if status == "failed":
            self.console.print(f"[red]failed[/]  {node_id}: {detail}")
        self.live.update(self._render())

    def close(self) -> None:
        self.running.clear()
        self.live.update(self._render())
        self.live.stop()


def reporter_for(stream: TextIO = sys.stderr) -> PlainReporter:
    return LiveReporter(stream) if stream.isatty() else PlainReporter(stream)


class SilentReporter:
    def node(self, node_id: str, status: str, *, cached: bool = False, detail: str = "") -> None:
        pass

    def close(self) -> None:
        pass
