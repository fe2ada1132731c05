"""What the page shows, read from the run database as JSON-ready dicts.

Every read opens the database the way `agentflow runs` and `show` do (`Store.open_reader`):
it attaches read-only for the length of one request and lets go, so a run writing the file
is never blocked; it only lets go of the file for the moment of the read (app.py shares
reads between requests, so open pages cost a busy run little)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from agentflow.compiler.hashing import digest, value_hash
from agentflow.compiler.names import template_id

from ..human import QUESTION, skeleton
from ..ledger import PROMPT_STEP, SESSION_STEP, plan_meta_key, rerun_reason
from ..store import Store, StoreError

SUB_VALUES = 2000  # parts of the run's inputs hashed to find a node's inputs among them


class NotFound(StoreError):
    """A run or node the database does not hold (the page answers 404)."""


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
    """The runs, newest first; none while nothing has run yet (the page waits for the first)."""
    if not Path(db).exists():
        return []
    with Store.open_reader(db) as store:
        return [run_summary(r) for r in store.list_runs()]


def shown_status(status: str, cached: bool) -> str:
    """A node's status as the page colours it: a reused node is `cached`."""
    return "cached" if cached and status == "succeeded" else status


def run_view(db: str, run_id: str, plans: dict[str, dict | None]) -> dict:
    """A run, its plan (when the run stored one) and its nodes' statuses, plus `version`: a
    digest of what the graph shows, so the page redraws only when something changed. `plans`
    keeps the plans read so far by hash (they never change): one read fewer the writer yields to."""
    with Store.open_reader(db) as store:
        run = store.get_run(run_id)
        if run is None:
            raise NotFound(f"there is no run {run_id} in {db}")
        nodes = store.run_statuses(run_id)
        if run["plan_hash"] not in plans:
            plans[run["plan_hash"]] = stored_plan(store, run)
    statuses = {node: shown_status(status, cached) for node, (status, cached) in nodes.items()}
    return {"run": run_summary(run), "inputs": plain(run["inputs"]), "plan": plans[run["plan_hash"]],
            "statuses": statuses,
            "version": digest("ui", json.dumps([run["status"], sorted(statuses.items())]))}


def stored_plan(store: Store, run: dict) -> dict | None:
    """The plan a run ran (runs store it since `agentflow ui` exists; older ones have none)."""
    text = store.get_meta(plan_meta_key(run["plan_hash"])) if run["plan_hash"] else None
    return None if text is None else json.loads(text)


def prompt_texts(plan: dict | None, node_id: str, args: dict[str, Any] | None) -> dict:
    """A task call's system and prompt text: filled in when all its inputs are known (the
    store keeps the inputs, as hashes, not the text), else the templates as written."""
    node = (plan or {}).get("nodes", {}).get(template_id(node_id), {})
    task = (plan or {}).get("tasks", {}).get(node.get("target"), {}) if node.get("kind") == "task" else {}
    definition = task.get("definition", {})
    texts = {k: definition[k] for k in ("system", "prompt") if definition.get(k)}
    if args is None:
        return {"filled": False, **texts}
    from ..tools import TemplateError, render_template
    try:
        return {"filled": True, **{k: render_template(t, args) for k, t in texts.items()}}
    except TemplateError:
        return {"filled": False, **texts}


def sub_values(value: Any, limit: int = SUB_VALUES) -> list[Any]:
    """A value and the values inside it (list items, record fields), breadth first, at most `limit`."""
    out: list[Any] = []
    queue = [value]
    while queue and len(out) < limit:
        v = queue.pop(0)
        out.append(v)
        queue += v if isinstance(v, list) else list(v.values()) if isinstance(v, dict) else []
    return out


def input_values(store: Store, run: dict, hashes: dict[str, str]) -> dict[str, dict]:
    """Each input's hash and, when found, its value: an earlier result with that hash, or the
    run's inputs or a part of them (a `for` item of a parameter)."""
    known = {value_hash(v): v for v in sub_values(run["inputs"])} if run["inputs"] is not None else {}
    known.update(store.values_by_hash(h for h in hashes.values() if h not in known))
    return {name: {"hash": h, "known": h in known, "value": known.get(h)} for name, h in hashes.items()}


def node_view(db: str, run_id: str, node_id: str) -> dict:
    """One node instance: its row (status, attempts, tokens, cost, latency, error), inputs,
    prompt, messages, output, and why it was reused or run."""
    with Store.open_reader(db) as store:
        run = store.get_run(run_id)
        row = next(iter(store.run_nodes(run_id, node_id)), None) if run else None
        if run is None or row is None:
            raise NotFound(f"run {run_id} has no node {node_id}")
        state = store.node_state(run_id, node_id)
        key = state.key if state else None
        stored = store.lookup_results([key]).get(key) if key and row["status"] == "succeeded" else None
        turns = [t.payload for t in store.load_turns(run_id, node_id)]
        inputs = input_values(store, run, state.input_hashes if state and state.input_hashes else {})
        plan = stored_plan(store, run)
        last = None
        if state is not None and state.key and not row["cached"]:
            last = store.last_node_records(run["flow"], [node_id], exclude_run=run_id).get(node_id)
    args = {n: i["value"] for n, i in inputs.items()} if all(i["known"] for i in inputs.values()) else None
    return plain({
        **row, "status": shown_status(row["status"], row["cached"]), "run_id": run_id,
        "template": template_id(node_id), "key": key,
        "inputs": inputs, "prompt": journaled_prompt(turns) or prompt_texts(plan, node_id, args),
        "messages": [t for t in turns if t.get("role") not in (SESSION_STEP, PROMPT_STEP)],
        "output": stored[0] if stored else None, "has_output": stored is not None,
        "question": open_question(row, turns),
        "why": why(row, bool(key), last, state.def_hash if state else None,
                   {n: i["hash"] for n, i in inputs.items()})})


def journaled_prompt(turns: list[dict]) -> dict | None:
    """The system text and prompt a task call started with, as its journal's first step keeps
    them; None for calls recorded before calls kept them."""
    step = next((t for t in turns if t.get("role") == PROMPT_STEP), None)
    if step is None:
        return None
    texts = {"system": m["content"] for m in step["messages"] if m["role"] == "system"}
    return {"filled": True, **texts, "prompt": step["messages"][-1]["content"]}


def open_question(row: dict, turns: list[dict]) -> dict | None:
    """What a waiting node asks a person (prompt, type) and the shape of an answer, for the
    page's form; None for any other node, or one that waits on nodes inside it."""
    asked = [t for t in turns if t.get("role") == QUESTION] if row["status"] == "waiting" else []
    if not asked:
        return None
    question = asked[-1]
    return {**{k: question[k] for k in ("prompt", "type", "returns")},
            "skeleton": skeleton(question["returns"], question["types"])}


def why(row: dict, keyed: bool, last, def_hash: str | None, inputs: dict) -> str:
    """Why the node was reused or run, as `--dry-run` would have said."""
    if row["cached"]:
        return "reused: a stored result with the same key (definition and inputs unchanged)"
    if not keyed:
        return "a structure (for, repeat, sub-choreography): its status sums up the calls inside it"
    return f"ran: {rerun_reason(last, def_hash, inputs)}"
