"""What the store records, and how: statuses, the records reads return, and the JSON text
values are stored as (never pickles)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from agentflow.compiler.hashing import canonical_json

STATUSES = ("pending", "running", "succeeded", "failed", "skipped", "cancelled", "waiting")
# waiting: a node a person answers (`model = "human"`), and a run that stopped at such nodes
FINAL_NODE_STATUSES = ("succeeded", "failed", "skipped", "cancelled", "waiting")
FINAL_RUN_STATUSES = ("succeeded", "failed", "cancelled", "waiting")
RUN_STATUSES = STATUSES + ("interrupted",)  # interrupted: its process died before it could say
DIED_ERROR = "interrupted: the run's process died"  # the error of a node that was running then
NO_VALUE: Any = object()  # a value not given (None is JSON null)


class NodeProgress(NamedTuple):
    """How far a run got with one node: what `--resume` reuses (a succeeded node's key) or
    runs again. Two fields, not a whole `NodeState`: a resume holds one for every node its
    run recorded (29 MB for 100k nodes, against 106 MB as `NodeState`s)."""

    status: str
    key: str | None


@dataclass(frozen=True)
class NodeState:
    """What a run recorded about one node: enough to resume it or explain a re-run."""

    run_id: str
    node_id: str
    role: str | None
    status: str
    cached: bool
    attempts: int
    key: str | None
    def_hash: str | None
    input_hash: str | None
    input_hashes: dict[str, str] | None
    output_hash: str | None
    error: str | None


@dataclass(frozen=True)
class AgentRecipe:
    """An agent created at run time, as its creator described it: one version of the agent
    `creator/name` (`version` 0 until stored). `model` None means the creator's model."""

    creator: str
    name: str
    instructions: str
    tools: tuple[str, ...]
    model: str | None
    depth: int
    version: int = 0

    @property
    def full_name(self) -> str:
        return f"{self.creator}/{self.name}"

    def content_hash(self) -> str:
        """What makes two recipes of one name the same version (not its depth: that follows
        from the creator)."""
        return canonical_json([self.instructions, sorted(self.tools), self.model])


@dataclass(frozen=True)
class Turn:
    """One journaled step of a task call (a model response, a tool result...)."""

    seq: int
    kind: str
    payload: Any
    key: str | None


@dataclass
class Preloaded:
    """Stored results a run may reuse, loaded at its start in one bounded query, so that
    most lookups are answered in memory. `values`: key -> its value hash, a space, then its
    value text (one string, not a tuple of two: ~100 bytes less per result, ~10 MB at 100k),
    for the flow's newest result of each node; `others`: the `hash()` of every other stored
    key, or None when there were too many to load (a key not in `values` is then looked up in
    the store). A key whose hash is not among them has no result; one whose hash is (another
    key's, rarely) is looked up. An int is ~90 bytes less than a key: ~9 MB a 100k-node run."""

    values: dict[str, str]
    others: set[int] | None

    def answers(self, key: str) -> bool:
        """Whether memory knows the answer for `key`: its result, or that there is none."""
        return key in self.values or (self.others is not None and hash(key) not in self.others)

    def result(self, key: str) -> tuple[Any, str] | None:
        """(value, value hash) preloaded for `key`, or None. A result is handed out once, then
        left to the store (a second call with the same key asks it): the values of a 100k-node
        rerun are let go as it goes, not held to its end."""
        found = self.values.get(key)
        if found is None:
            return None
        self.stored(key)  # from now on the store answers it, as for a result stored in the run
        value_hash, _, text = found.partition(" ")
        return loaded(text), value_hash

    def stored(self, key: str) -> None:
        """A result was stored for `key` during the run: from now on the store answers it."""
        self.values.pop(key, None)
        if self.others is not None:
            self.others.add(hash(key))


# The most JSON text a node's result, an answer or a run's inputs may be. Each is held whole,
# several times over, by the process (a value, its JSON, its hash input) and by the writer's
# DuckDB, and every later run of the flow preloads it: a 120 MB result took 2 GB of memory
# to store. Journal steps are not bounded: they carry what a tool gave a model, whose own
# limits come first.
MAX_VALUE_BYTES = 32 << 20


class ValueTooLarge(ValueError):
    """A value over MAX_VALUE_BYTES: each caller words it as the user's error (a node's
    failure, an input or an answer that is too large)."""


def result_too_large(err: ValueTooLarge) -> str:
    """A node's failure for a result over the bound, on either engine."""
    return f"its result is {err}; return large data as a file in the workspace and its path instead"


def bounded(text: str) -> str:
    """`text`, or ValueTooLarge when its UTF-8 is over MAX_VALUE_BYTES."""
    if len(text) > MAX_VALUE_BYTES // 4:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            raise ValueTooLarge(f"{size / (1 << 20):.1f} MB as JSON, over the {MAX_VALUE_BYTES >> 20} MB "
                                f"a stored value may be")
    return text


def to_json(value: Any) -> str:
    """The text a JSON column stores for a value (see `storable`)."""
    return storable(canonical_text(value), value)


def bounded_json(value: Any) -> str:
    """`to_json(value)`, or ValueTooLarge when it is over MAX_VALUE_BYTES."""
    return storable(bounded(canonical_text(value)), value)


def ordered_json(value: Any) -> str:
    """A run's value as stored: JSON keeping its key order, so a no-op rerun prints it as
    the run did (see `storable`)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not storable as JSON: {err}") from None
    return storable(bounded(text), value)


def canonical_text(value: Any) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not storable as JSON: {err}") from None


# DuckDB's JSON columns refuse a lone surrogate even as a `\udcff` escape, so a value whose
# canonical text has one (an undecodable file name) is stored as {WRAPPED: its text}, and so
# is a value that itself looks like that wrapper; `loaded` undoes exactly one wrapping.
WRAPPED = "agentflow:json"


def storable(text: str, value: Any) -> str:
    if "\\ud" not in text and not (type(value) is dict and len(value) == 1 and WRAPPED in value):
        return text
    return canonical_json({WRAPPED: text})


def loaded(text: str) -> Any:
    """The value stored as `text` by `to_json`."""
    value = json.loads(text)
    if type(value) is dict and len(value) == 1 and WRAPPED in value:
        return json.loads(value[WRAPPED])
    return value

