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
from agentflow.compiler.types import Validators, type_from_json

from .store import Store

QUESTION, ANSWER = "question", "answer"  # the journal steps of a node a person answers


class AnswerError(UsageError):
    """`agentflow answer` of a node that is not waiting, or a value that does not fit (exit 2)."""


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
    from pydantic import ValidationError
    validators = Validators.from_plan_table(question["types"])
    try:
        return validators.validate(type_from_json(question["returns"]), value, strict=True)
    except ValidationError as err:
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
        raise AnswerError(f"there is no run {run_id} in the database; `agentflow runs` lists them")
    state = store.run_node_states(run_id).get(node_id)
    if state is None:
        raise AnswerError(f"run {run_id} has no node {node_id}; `agentflow show {run_id}` lists its nodes")
    if state.status != "waiting" or state.key is None:
        raise AnswerError(f"node {node_id} of run {run_id} is not waiting for an answer (it is {state.status}); "
                          f"`agentflow show {run_id}` lists the waiting nodes")
    questions = [t.payload for t in store.load_turns(run_id, node_id, state.key) if t.kind == QUESTION]
    if not questions:
        raise AnswerError(f"node {node_id} of run {run_id} has no recorded question; rerun with --resume")
    return Waiting(run_id, run["flow"], node_id, state.role, state.key, questions[-1],
                   ran_on_temporal(store, run_id))


def answer(store: Store, run_id: str, node_id: str, value: Any, by: str) -> tuple[Waiting, Any]:
    """Validates `value` for the waiting node and, for a local run, stores it (`store` is then a
    writer): the node succeeds with it, and `--resume` continues. Returns the node and the
    valid value; a Temporal run's caller delivers it to the workflow (`store` may be a reader).
    Nothing is stored when the value does not fit (AnswerError)."""
    node = waiting_node(store, run_id, node_id)
    value = validated(node.question, value)
    if not node.temporal:
        store.node_finished(run_id, node_id, status="succeeded", value=value, key=node.key, role=node.role,
                            attempts=1)
        store.append_turn(run_id, node_id, key=node.key, kind=ANSWER, payload=answer_step(value, by))
        store.flush()
    return node, value


def answer_text(db_path: Path, run_id: str, node_id: str, text: str, by: str) -> tuple[Waiting, Any]:
    """`agentflow answer`: what a person typed, checked and (for a local run) stored. The
    database is read first, and opened for writing only for a local run's valid answer: a
    Temporal run's client may hold it while it follows the workflow."""
    if not Path(db_path).is_file():
        raise AnswerError(f"no run database at {db_path}; pass the run's --db")
    with Store.open_reader(db_path) as reader:
        node = waiting_node(reader, run_id, node_id)
    value = parse_answer(text, node.question)
    if node.temporal:
        return node, validated(node.question, value)
    with Store.open_writer(db_path) as store:
        return answer(store, run_id, node_id, value, by)


def ran_on_temporal(store: Store, run_id: str) -> bool:
    """Whether `agentflow run --engine temporal` ran it: its client keeps how far it recorded the
    workflow's events in the database's meta, under this key (runtime/temporal/client.py)."""
    return store.get_meta(f"temporal_cursor/{run_id}") is not None


def answer_step(value: Any, by: str) -> dict:
    """The journal step of an answer: the value and who gave it."""
    return {"role": ANSWER, "value": value, "by": by}
