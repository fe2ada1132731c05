"""Answering a node that waits for a person (`model = "human"`): the one place that checks an
answer against the node's question and stores it, for `agentflow answer`, `run --interactive`
and the run page alike.

An answer is stored like any node's result: under the node's key (so a later run with the same
key reuses it, unless `cache = false`), with the node marked succeeded in its run (so `--resume`
uses it), and journaled after the question with who gave it (`created_at` says when). A
Temporal run's answer goes to its workflow instead, which records it with the run's events.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.compiler.errors import UsageError
from agentflow.compiler.types import TypeMismatch, Validators, type_from_json

from .human import ANSWER, QUESTION, answer_step
from .ledger import temporal_cursor_key
from .store import Store, ValueTooLarge


class AnswerError(UsageError):
    """`agentflow answer` of a node that is not waiting, or a value that does not fit (exit 2)."""


class NotAnswerable(AnswerError):
    """The run or node to answer is missing or not waiting: no value could fit (the page says 409)."""


@dataclass(frozen=True)
class Waiting:
    """A node of a run that waits for a person, with what it asked."""

    run_id: str
    flow: str
    node_id: str
    role: str | None
    key: str
    question: dict
    temporal: bool  # the run ran on Temporal: its workflow takes the answer


def parse_answer(text: str, question: dict) -> Any:
    """What a person typed, as a value: JSON, except that the answer to a `str` or to a literal
    union of strings may be the text itself (`approve` as well as `"approve"`)."""
    textual = question["returns"] == "str" or isinstance(question["returns"], dict) and "literal" in question["returns"]
    try:
        value = json.loads(text)
    except ValueError:
        if textual:
            return text
        raise AnswerError(f"the answer is not JSON (got {text[:60]!r}); an answer of type {question['type']} "
                          f"is written as JSON") from None
    return text if question["returns"] == "str" and not isinstance(value, str) else value


def validated(question: dict, value: Any) -> Any:
    """`value` checked against the question's type with the schema a model's answer meets
    (strictly: "3" is no int), or AnswerError with the validation error."""
    validators = Validators.from_plan_table(question["types"])
    try:
        return validators.validate(type_from_json(question["returns"]), value, strict=True)
    except TypeMismatch as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'answer'}: {e.get('msg')}"
                             for e in err.errors()[:5])
        raise AnswerError(f"the answer does not fit {question['type']}: {problems}") from None


def checked(text: str, question: dict) -> Any:
    """Typed text as a valid answer to `question` (parse, then validate)."""
    return validated(question, parse_answer(text, question))


def waiting_node(store: Store, run_id: str, node_id: str) -> Waiting:
    """The waiting node `node_id` of `run_id`, or AnswerError saying why it cannot be answered."""
    run = store.get_run(run_id)
    if run is None:
        raise NotAnswerable(f"there is no run {run_id} in the database; `agentflow runs` lists them")
    state = store.node_state(run_id, node_id)
    if state is None:
        raise NotAnswerable(f"run {run_id} has no node {node_id}; `agentflow show {run_id}` lists its nodes")
    if state.status != "waiting":
        raise NotAnswerable(f"node {node_id} of run {run_id} is not waiting for an answer (it is {state.status}); "
                          f"`agentflow show {run_id}` lists the waiting nodes")
    questions = [t.payload for t in store.load_turns(run_id, node_id, state.key)
                 if t.kind == QUESTION] if state.key else []
    if not questions or state.key is None:
        raise NotAnswerable(f"node {node_id} of run {run_id} waits for nodes inside it that a person answers; "
                          f"answer those (`agentflow show {run_id}` lists the waiting nodes)")
    return Waiting(run_id, run["flow"], node_id, state.role, state.key, questions[-1],
                   ran_on_temporal(store, run_id))


def store_answer(store: Store, node: Waiting, value: Any, by: str) -> None:
    """Stores a valid answer (`store` is a writer): the node succeeds with it in its run and
    its value is kept under the node's key, journaled after the question with who gave it."""
    try:
        store.node_finished(node.run_id, node.node_id, status="succeeded", value=value, key=node.key,
                            role=node.role, attempts=1)
    except ValueTooLarge as err:
        raise AnswerError(f"the answer is {err}; answer with a file's path instead") from None
    store.append_turn(node.run_id, node.node_id, key=node.key, kind=ANSWER, payload=answer_step(value, by))
    store.flush()


@dataclass(frozen=True)
class Given:
    """An answer that was accepted: the node, its valid value, and whether a running Temporal
    workflow took it (it then records it with the run's events) or the database did."""

    node: Waiting
    value: Any
    delivered: bool


def answer(db_path: Path, run_id: str, node_id: str, text: str, by: str,
           temporal: dict | None = None) -> Given:
    """Answers a waiting node with what a person typed: `agentflow answer` and the run page.

    The answer is checked first (AnswerError, exit 2, and nothing stored when it does not fit).
    A Temporal run's workflow, still running, takes it by signal (`temporal`: the server's
    `address` and `namespace`; the run's client, following or at `--resume`, records it); any
    other run's answer is stored in the database, opened for writing only then (a Temporal
    client may hold it while it follows its workflow)."""
    if not Path(db_path).is_file():
        raise NotAnswerable(f"no run database at {db_path}; pass the run's --db")
    with Store.open_reader(db_path) as reader:
        node = waiting_node(reader, run_id, node_id)
    value = validated(node.question, parse_answer(text, node.question))
    if node.temporal and _delivered(Path(db_path), node, value, by, temporal or {}):
        return Given(node, value, True)
    with Store.open_writer(db_path) as store:
        store_answer(store, node, value, by)
    return Given(node, value, False)


def next_step(given: Given) -> str:
    """What an accepted answer did and how the run goes on: `agentflow answer` and the page say it."""
    node = given.node
    resume = f"agentflow run FILE{' --engine temporal' if node.temporal else ''} --resume {node.run_id}"
    if given.delivered:
        return (f"answered {node.node_id} of run {node.run_id}: its Temporal workflow goes on on the workers; "
                f"`{resume}` collects the run")
    return f"answered {node.node_id} of run {node.run_id}; continue with `{resume}`"


def _delivered(db_path: Path, node: Waiting, value: Any, by: str, temporal: dict) -> bool:
    """Signals the answer to the run's workflow; False when it is not running (a new execution
    at `--resume` reuses the answer stored in the database instead)."""
    import asyncio
    import importlib.util
    if importlib.util.find_spec("temporalio") is None:
        raise AnswerError(f"run {node.run_id} ran on Temporal: answering it needs the temporal extra "
                          f"(pip install 'agentflow[temporal]')")
    from .temporal.client import TemporalSettings, deliver_answer
    return asyncio.run(deliver_answer(TemporalSettings(**temporal), db_path, node, value, by))


def ran_on_temporal(store: Store, run_id: str) -> bool:
    """Whether `agentflow run --engine temporal` ran it: its client keeps how far it recorded the
    workflow's events in the database's meta, under this key (runtime/temporal/client.py)."""
    return store.get_meta(temporal_cursor_key(run_id)) is not None
