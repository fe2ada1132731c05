"""Runs of any size on Temporal: a history stays far below Temporal's cap of 50,000 events.

Two devices, both invisible to the client, which follows the run's workflow by its id:

- **Chunks.** A `for` over more than `chunk` items (1,000 by default) runs its items as child
  workflows (`agentflow.chunk`) of at most `chunk` items each, one chunk after another. A
  chunk runs the engine on the loop body for its items and returns their values with the
  records it made, which the parent adds to its own: the client reads them from the parent.
  A loop whose body reaches a session role, a persistent agent or a person stays inline
  (conversations and answers belong to the run's workflow).
- **Continue-as-new.** Once a workflow's history has `history` events (10,000 by default), or
  Temporal suggests it, calls not yet started wait (`Handover`); when the running ones have
  finished, the workflow continues as new, carrying what it knows: results by key, what
  session calls added to their sessions, answers, chunks done, the records the client has
  not read. The new run replays the plan from the carried results without recording the
  replay again.
"""
from __future__ import annotations

import asyncio
import os
from typing import Callable, Iterator, Literal, cast

from temporalio import workflow

from agentflow.compiler import schema
from agentflow.compiler.errors import UsageError
from agentflow.compiler.ir import Expr, children

from ..human import is_human

CHUNK = 1000  # items per chunk workflow
HISTORY = 10_000  # events in a history before it continues as new
HANDOVER_WAIT_S = 10.0  # how long a workflow about to continue as new waits for its client to read


def scale_settings() -> dict:
    """Chunk size and history bound of a run (part of its workflow input), from the client's
    environment: AGENTFLOW_TEMPORAL_CHUNK and AGENTFLOW_TEMPORAL_HISTORY."""
    return {"chunk": _positive("AGENTFLOW_TEMPORAL_CHUNK", CHUNK),
            "history": _positive("AGENTFLOW_TEMPORAL_HISTORY", HISTORY),
            "handover_wait_s": HANDOVER_WAIT_S}


def _positive(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{variable} must be a positive whole number, got {text!r}: unset it for {default}")
    return int(text)


# ---------------------------------------------------------------- which loops run as chunks

def _nodes(plan: schema.Plan, body: schema.Body) -> Iterator[schema.Node]:
    """Every node a body can start, at any depth (sub-choreographies' bodies included)."""
    def walk(expr: Expr) -> Iterator[schema.Node]:
        if expr[0] == "node":
            node = plan["nodes"][expr[1]]
            yield node
            for arg in _args(node):
                yield from walk(arg)
            if node["kind"] == "for":
                yield from walk(node["iter"])
            if node["kind"] == "repeat":
                yield from walk(node["until"])
            if "body" in node:
                yield from _nodes(plan, node["body"])  # type: ignore[typeddict-item]
        else:
            for child in children(expr):
                yield from walk(child)

    for binding in body["bindings"].values():
        yield from walk(binding["expr"])
    if body["result"] is not None:
        yield from walk(body["result"])


def _args(node: schema.Node) -> list[Expr]:
    """A call's or sub-choreography's argument expressions (a loop has none)."""
    return list(cast(dict, node).get("args", {}).values())


def chunkable(plan: schema.Plan, node: schema.ForNode) -> bool:
    """Whether a loop's items may run in child workflows (not a sequential loop's)."""
    tasks = {n["target"] for n in _nodes(plan, node["body"]) if n["kind"] == "task"}  # type: ignore[typeddict-item]
    return not node.get("sequential") and runs_apart(plan, tasks)


def runs_apart(plan: schema.Plan, tasks: set[str]) -> bool:
    """Whether calls of these tasks may run in a child workflow: none of them, nor any task
    they delegate to, keeps a conversation (a session, a persistent agent's memory), asks a
    person or creates agents (the run's recipes are versioned in one place), as all of these
    live in the run's workflow."""
    tasks, seen = set(tasks), set()
    while tasks:
        target = tasks.pop()
        seen.add(target)
        definition = plan["tasks"][target]["definition"]
        if definition["memory"] != "none" or is_human(definition["model"]) or "spawn" in definition:
            return False
        tasks.update(t["delegate"] for t in definition["tools"] if "delegate" in t and t["delegate"] not in seen)
    return True


def agent_runs_apart(plan: schema.Plan, definition: schema.TaskDefinition) -> bool:
    """Whether a created agent's call may run in a child workflow: unlike a declared role's,
    its recipes travel with it (the child is given the run's latest, and its parent versions
    what it creates), so only a person answering it or a task it delegates to can keep it in
    its caller's workflow."""
    delegates = {t["delegate"] for t in definition["tools"] if "delegate" in t}
    return not is_human(definition["model"]) and runs_apart(plan, delegates)


def outer_names(plan: schema.Plan, body: schema.Body) -> set[str]:
    """The names a loop body reads from outside itself: what a chunk is given with its items."""
    read: set[str] = set()
    bound: set[str] = set()

    def walk(expr: Expr) -> None:
        if expr[0] == "name":
            read.add(expr[1])
        elif expr[0] == "comp":
            bound.add(expr[2])
        if expr[0] == "node":
            node = plan["nodes"][expr[1]]
            for arg in _args(node):
                walk(arg)
            if node["kind"] == "for":
                walk(node["iter"])
                bound.add(node["var"])
                block(node["body"])
            elif node["kind"] == "repeat":
                walk(node["until"])
                block(node["body"])  # a sub-choreography's body reads only its arguments
        else:
            for child in children(expr):
                walk(child)

    def block(b: schema.Body) -> None:
        for name, binding in b["bindings"].items():
            bound.add(name)
            read.update(binding["after"], binding.get("session_after", []))
            walk(binding["expr"])
        if b["result"] is not None:
            walk(b["result"])

    block(body)
    return read - bound - {"prev"}


# ---------------------------------------------------------------- continue-as-new

class Handover:
    """Decides when a workflow continues as new: once its history is long, calls that would
    start wait here, and the workflow hands over when none runs and one waits.

    `busy` counts calls and chunk workflows running; `stopping` is true once the run failed
    (no call starts then, so waiting calls go on to be aborted rather than carried). Every run
    starts at least one call before it hands over, so a run makes progress whatever the bound."""

    def __init__(self, bound: int, stopping: Callable[[], bool]) -> None:
        self.bound = bound
        self.stopping = stopping
        self.busy = 0
        self.waiting = 0
        self.entered = 0
        self._due = False

    def due(self) -> bool:
        if not self._due and self.entered:
            info = workflow.info()
            self._due = info.get_current_history_length() >= self.bound or info.is_continue_as_new_suggested()
        return self._due

    async def enter(self) -> None:
        if self.due():
            self.waiting += 1
            try:
                await workflow.wait_condition(self.stopping)  # otherwise the workflow hands over first
            finally:
                self.waiting -= 1
        self.busy += 1
        self.entered += 1

    def leave(self) -> None:
        self.busy -= 1

    def ready(self) -> bool:
        return self._due and self.waiting > 0 and self.busy == 0 and not self.stopping()


class GatedSlots(asyncio.Semaphore):
    """The run's global call slots, which also pass through the `Handover`. Delegated calls
    take no global slot, so a running call's delegations finish before the hand-over."""

    def __init__(self, value: int, handover: Handover) -> None:
        super().__init__(value)
        self.handover = handover

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        try:
            await self.handover.enter()
        except BaseException:
            super().release()
            raise
        return True

    def release(self) -> None:
        self.handover.leave()
        super().release()
