"""Running blocking tool code off the event loop, and every call's timeout."""
from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections import deque
from typing import Any, Callable

from .spec import ToolSpec, TransientToolError

DEFAULT_TIMEOUT_S = 600.0  # a tool without `timeout` is stopped after 10 minutes


class ToolThreads:
    """Runs blocking tool functions on worker threads, off the event loop.

    Unlike `asyncio.to_thread`, no concurrent.futures.Future is chained per call, and
    finished calls go back to their loop in batches: one wake-up for every call that
    finished since the last. A trivial call then costs ~15 µs instead of ~65 µs, which is
    most of the scheduler's cost in a fan-out of small python tools. Threads start as
    calls need them, up to `max_threads`, and are daemons: a call that outlived its
    timeout cannot keep the process alive."""

    def __init__(self, max_threads: int) -> None:
        self._max_threads = max_threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._outstanding = 0  # submitted, not yet finished
        self._finished: dict[asyncio.AbstractEventLoop, list] = {}

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._outstanding += 1
            if self._outstanding > self._threads and self._threads < self._max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name="agentflow-tool", daemon=True).start()
        self._jobs.put((loop, future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            loop, future, fn, args, kwargs = self._jobs.get()
            try:
                outcome = (True, fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = (False, exc)
            with self._lock:
                self._outstanding -= 1
                finished = self._finished.setdefault(loop, [])
                finished.append((future, outcome))
                first = len(finished) == 1
            if first:
                try:
                    loop.call_soon_threadsafe(self._deliver, loop)
                except RuntimeError:  # the loop is closed: nobody awaits these any more
                    with self._lock:
                        self._finished.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            finished = self._finished.pop(loop, [])
        for future, (ok, value) in finished:
            if not future.done():  # else cancelled, e.g. by the tool's timeout
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


tool_threads = ToolThreads(max_threads=32)


def timeout_of(spec: ToolSpec) -> float:
    return DEFAULT_TIMEOUT_S if spec.timeout_s is None else spec.timeout_s


def timed_out(spec: ToolSpec) -> TransientToolError:
    hint = " (the default timeout; set `timeout` on the tool to allow more)" if spec.timeout_s is None else ""
    return TransientToolError(
        f"tool {spec.name} timed out after {timeout_of(spec):g}s{hint}", tool=spec.name
    )


async def with_timeout(spec: ToolSpec, awaitable: Any) -> Any:
    """`awaitable` within the tool's timeout, awaited in the caller's task: once it passes, the
    task is cancelled and the call raises the tool's timeout error (as `asyncio.timeout`
    would, at under half its cost: see `Deadlines`)."""
    deadlines = _deadlines_of(asyncio.get_running_loop())
    deadline = deadlines.start(timeout_of(spec))
    try:
        value = await awaitable
    except asyncio.CancelledError:
        if deadline.expired and deadline.task.uncancel() <= deadline.cancelling:
            raise timed_out(spec) from None  # our own cancellation, and no one else's
        raise
    finally:
        deadlines.end(deadline)
    if deadline.expired:  # the tool swallowed the cancellation: the task must not keep it
        deadline.task.uncancel()
    return value


class Deadline:
    """One call's deadline: the task it cancels once passed, unless the call ended first."""

    __slots__ = ("length", "when", "task", "cancelling", "expired", "ended")

    def __init__(self, length: float, when: float, task: asyncio.Task) -> None:
        self.length = length
        self.when = when
        self.task = task
        self.cancelling = task.cancelling()  # cancellations asked before this deadline's
        self.expired = False
        self.ended = False


class Deadlines:
    """The deadlines of one event loop's tool calls, with one timer per timeout length, not
    one per call: `asyncio.timeout` makes, schedules and cancels a timer for every call, ~8 µs
    and a tenth of a trivial call's cost in a fan-out. Calls of one length pass their
    deadlines in the order they started, so each length keeps a queue whose head passes
    first, and its timer is set for the head alone. Ended calls leave the queue when they
    reach its head, or when they outnumber the running ones (memory stays bounded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[Deadline]] = {}
        self._running: dict[float, int] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def start(self, length: float) -> Deadline:
        task = asyncio.current_task(self._loop)
        assert task is not None, "tool calls run in a task"
        deadline = Deadline(length, self._loop.time() + length, task)
        queue = self._queues.setdefault(length, deque())
        queue.append(deadline)
        running = self._running[length] = self._running.get(length, 0) + 1
        if len(queue) > 2 * running + 1024:
            self._queues[length] = deque(d for d in queue if not d.ended)
        if length not in self._timers:
            self._timers[length] = self._loop.call_at(deadline.when, self._expire, length)
        return deadline

    def end(self, deadline: Deadline) -> None:
        """The call ended: its deadline no longer cancels anything."""
        deadline.ended = True
        self._running[deadline.length] -= 1

    def _expire(self, length: float) -> None:
        del self._timers[length]
        queue = self._queues[length]
        now = self._loop.time()
        while queue and (queue[0].ended or queue[0].when <= now):
            deadline = queue.popleft()
            if not deadline.ended:
                deadline.expired = True
                deadline.task.cancel()
        if queue:
            self._timers[length] = self._loop.call_at(queue[0].when, self._expire, length)


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> Deadlines:
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines[loop] = Deadlines(loop)
    return deadlines
