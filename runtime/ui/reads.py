"""What the page shows, read from the run database as JSON-ready dicts.

Every read opens the database the way `agentflow runs` and `show` do (`Store.open_reader`):
it attaches read-only for the length of one request and lets go, so a run writing the file
meanwhile only yields it for a few milliseconds and is never blocked."""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from agentflow.compiler.hashing import digest
from agentflow.compiler.names import template_id

from ..ledger import SESSION_STEP, plan_meta_key, rerun_reason
from ..store import Store, StoreError


class NotFound(StoreError):
    """A run or node the database does not hold (the page answers 404)."""


@contextmanager
def reader(db: str) -> Iterator[Store]:
    with Store.open_reader(db) as store:
        yield store


def plain(value: Any) -> Any:
    """Dates as ISO text, so rows go out as JSON."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def duration_s(run: dict) -> float | None:
    start, end = run.get("started_at"), run.get("finished_at")
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def run_summary(run: dict) -> dict:
    """A run as the list shows it: the store's row, its duration, without inputs (they may be big)."""
    return plain({**{k: v for k, v in run.items() if k != "inputs"}, "duration_s": duration_s(run)})


def list_runs(db: str) -> list[dict]:
    with reader(db) as store:
        return [run_summary(r) for r in store.list_runs()]


def shown_status(node: dict) -> str:
    """A node's status as the page colours it: a reused node is `cached`."""
    return "cached" if node["cached"] and node["status"] == "succeeded" else node["status"]


def run_view(db: str, run_id: str, plans: dict[str, dict | None]) -> dict:
    """A run, its plan (when the run stored one) and its nodes, plus `version`: a digest of
    what the graph shows, so the page redraws only when something changed. `plans` keeps
    the plans read so far by hash (they never change): one read fewer the writer yields to."""
    with reader(db) as store:
        run = store.get_run(run_id)
        if run is None:
            raise NotFound(f"there is no run {run_id} in {db}")
        nodes = store.run_nodes(run_id)
        if run["plan_hash"] not in plans:
            plans[run["plan_hash"]] = stored_plan(store, run)
    statuses = {n["node"]: shown_status(n) for n in nodes}
    return {"run": run_summary(run), "inputs": plain(run["inputs"]), "plan": plans[run["plan_hash"]],
            "nodes": [plain(n) for n in nodes], "statuses": statuses,
            "version": digest("ui", json.dumps([run["status"], sorted(statuses.items())]))}


def stored_plan(store: Store, run: dict) -> dict | None:
    """The plan a run ran (runs store it since `agentflow ui` exists; older ones have none)."""
    text = store.get_meta(plan_meta_key(run["plan_hash"])) if run["plan_hash"] else None
    return None if text is None else json.loads(text)


def prompt_templates(plan: dict | None, node_id: str) -> dict:
    """A task call's system and prompt text before its inputs fill them in (the filled-in
    prompt is not stored; its inputs are, as hashes)."""
    node = (plan or {}).get("nodes", {}).get(template_id(node_id), {})
    task = (plan or {}).get("tasks", {}).get(node.get("target"), {}) if node.get("kind") == "task" else {}
    definition = task.get("definition", {})
    return {k: definition[k] for k in ("system", "prompt") if definition.get(k)}


def node_view(db: str, run_id: str, node_id: str) -> dict:
    """One node instance: its row (status, attempts, tokens, cost, latency, error), inputs,
    messages, output, and why it was reused or run."""
    with reader(db) as store:
        run = store.get_run(run_id)
        row = next((n for n in store.run_nodes(run_id) if n["node"] == node_id), None) if run else None
        if run is None or row is None:
            raise NotFound(f"run {run_id} has no node {node_id}")
        state = store.run_node_states(run_id).get(node_id)
        key = state.key if state else None
        stored = store.lookup_results([key]).get(key) if key and row["status"] == "succeeded" else None
        turns = [t.payload for t in store.load_turns(run_id, node_id)]
        templates = prompt_templates(stored_plan(store, run), node_id)
        last = None
        if state is not None and state.key and not row["cached"]:
            last = store.last_node_records(run["flow"], [node_id], exclude_run=run_id).get(node_id)
    inputs = state.input_hashes if state and state.input_hashes else {}
    return plain({
        **row, "status": shown_status(row), "run_id": run_id, "template": template_id(node_id), "key": key,
        "inputs": inputs, "prompt": templates,
        "messages": [t for t in turns if t.get("role") != SESSION_STEP],
        "output": stored[0] if stored else None, "has_output": stored is not None,
        "why": why(row, state is not None and bool(state.key), last, state.def_hash if state else None, inputs)})


def why(row: dict, keyed: bool, last, def_hash: str | None, inputs: dict) -> str:
    """Why the node was reused or run, as `--dry-run` would have said."""
    if row["cached"]:
        return "reused: a stored result with the same key (definition and inputs unchanged)"
    if not keyed:
        return "a structure (for, repeat, sub-choreography): its status sums up the calls inside it"
    return f"ran: {rerun_reason(last, def_hash, inputs)}"
