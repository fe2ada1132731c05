"""The read side of the run history, for `runs`, `show`, `graph --run` and `agents`.

Readers open the database read-only and may run while a run is writing to it (`agents
reset`, the one write here, needs the database to itself)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from agentflow.compiler.errors import UsageError
from agentflow.compiler.hashing import escape_surrogates

from .ledger import child_workflow_key, child_workflow_of
from .store import Store, StoreError


def _reader(db: str) -> Store:
    if not Path(db).exists():
        raise StoreError(f"no run database at {db}; run `agentflow run` first, or pass --db")
    return Store.open_reader(db)


def list_runs(db: str) -> list[dict]:
    with _reader(db) as store:
        return store.list_runs()


def run_detail(db: str, run_id: str) -> tuple[dict, list[dict]]:
    """A run as `runs` lists it (its status included), and its nodes as `show` lists them."""
    with _reader(db) as store:
        run = store.get_run(run_id)
        if run is None:
            raise _no_run(db, run_id)
        return run, store.run_nodes(run_id)


def _no_run(db: str, run_id: str) -> StoreError:
    return StoreError(f"there is no run {run_id} in {db}; `agentflow runs` lists them")


def node_detail(db: str, run_id: str, node_id: str) -> dict:
    """One node of a run for `show RUN NODE`: its row as `show RUN` lists it, its messages
    (prompt, model answers, tool calls and results) and its result, if stored."""
    with _reader(db) as store:
        if store.get_run(run_id) is None:
            raise _no_run(db, run_id)
        row = next(iter(store.run_nodes(run_id, node_id)), None)
        journal = store.node_journal(run_id, node_id) if row is not None else None
        if row is None or journal is None:
            raise UsageError(unknown_node_message(run_id, node_id, [n["node"] for n in store.run_nodes(run_id)]))
        under = child_workflow_key(run_id, "")
        children = {key[len(under):]: json.loads(value) for key, value in store.meta_under(under).items()}
    from .ledger import PROMPT_STEP, SESSION_STEP, structure_key
    messages: list[dict] = []
    for step in journal["steps"]:
        if step.get("role") == PROMPT_STEP:
            messages += step["messages"]
        elif step.get("role") != SESSION_STEP:
            messages.append(step)
    detail = {**row, "messages": messages}
    workflow = child_workflow_of(node_id, children)
    if workflow is not None:  # a Temporal run's node that ran in a child workflow
        detail["workflow"] = workflow
    if "result" in journal and journal["key"] != structure_key(run_id, node_id):
        detail["result"] = journal["result"]
    return detail


def unknown_node_message(run_id: str, node_id: str, known: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(node_id, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"run {run_id} has no node {node_id}; {hint}`agentflow show {run_id}` lists its nodes"


def run_nodes(db: str, run_id: str) -> list[dict]:
    return run_detail(db, run_id)[1]


def run_statuses(db: str, run_id: str, flow: str, entry: str) -> dict[str, str]:
    """Instance node id -> status (`cached` for reused nodes), for `graph --run` of a run of
    this flow and entry: another flow's node ids would not match the plan's."""
    run, nodes = run_detail(db, run_id)
    if (run["flow"], run["entry"]) != (flow, entry):
        raise UsageError(f"run {run_id} ran {run['flow']}:{run['entry']}, not {flow}:{entry}; "
                         f"draw it with its own file (and --entry), or pick a run of this flow from `agentflow runs`")
    return {n["node"]: ("cached" if n["cached"] else n["status"]) for n in nodes}


def list_agents(db: str) -> list[dict]:
    with _reader(db) as store:
        return store.agents()


def agent_detail(db: str, name: str, generation: int | None = None) -> dict:
    """A persistent agent for `agents show`: its generation (the current one unless named),
    and that generation's turns in order."""
    with _reader(db) as store:
        found = store.agent_turns(name, generation)
        known = [a["agent"] for a in store.agents()] if found is None else []
    if found is None:
        if generation is not None and name in known:
            raise UsageError(f"agent {name} has no generation {generation}; `agentflow agents` shows its current one")
        raise UsageError(unknown_agent_message(name, known))
    return {"agent": name, "generation": found[0], "turns": found[1]}


def reset_agent(db: str, name: str) -> int:
    """Starts a persistent agent's conversation afresh; returns its new generation."""
    with _reader(db) as store:
        known = [a["agent"] for a in store.agents()]
    if name not in known:
        raise UsageError(unknown_agent_message(name, known))
    with Store.open_writer(db) as store:
        return store.reset_agent(name)


def unknown_agent_message(name: str, known: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"there is no persistent agent {name}; {hint}`agentflow agents` lists them"


def print_agents(agents: list[dict], as_json: bool) -> None:
    if as_json:
        print(rows_json(agents))
        return
    from rich.table import Table
    table = Table("agent", "generation", "turns", "tokens", "runs", "last used", box=None)
    for a in agents:
        table.add_row(a["agent"], str(a["generation"]), str(a["turns"]), str(a["tokens"]), str(a["runs"]),
                      str(a["last_used"] or "")[:19])
    _console().print(table if agents else "no persistent agents yet")


def print_agent(detail: dict, as_json: bool) -> None:
    """An agent's conversation, turn by turn, each with the run and node that said it."""
    if as_json:
        print(escape_surrogates(rows_json(detail)))
        return
    turns = detail["turns"]
    lines = [f"agent {detail['agent']} (generation {detail['generation']}, {_plural(len(turns), 'turn')})"]
    for t in turns:
        lines.append(f"--- {t['turn']} {_message_title(t['message'])}  [{t['run_id']} {t['node_id']}]")
        lines += _message_lines(t["message"])
    print(escape_surrogates("\n".join(lines)))


def rows_json(rows: list[dict] | dict) -> str:
    """What `--json` prints: the rows (or one) as indented JSON, dates and decimals as text."""
    return json.dumps(rows, indent=2, default=str, ensure_ascii=False)


def print_runs(runs: list[dict], as_json: bool) -> None:
    if as_json:
        print(rows_json(runs))
        return
    if not runs:
        print("no runs yet")
        return
    print_table(("run", "flow", "entry", "status", "started", "nodes", "reused", "failed"), [
        (r["run_id"], r["flow"], r.get("entry") or "", r["status"], str(r["started_at"])[:19],
         str(r.get("nodes", "")), str(r.get("cached", "")), str(r.get("failed", ""))) for r in runs])


def print_nodes(run: dict, nodes: list[dict], as_json: bool) -> None:
    if as_json:
        print(rows_json(nodes))
        return
    rows = []
    for n in nodes:
        tokens = (n.get("prompt_tokens") or 0) + (n.get("completion_tokens") or 0)
        duration = n.get("duration_ms")
        rows.append((n["node"], n.get("role") or "", n["status"], "yes" if n["cached"] else "",
                     str(n.get("attempts") or 0), "" if duration is None else f"{duration:.0f}",
                     str(tokens or ""), f"{n['cost_usd']:.4f}" if n.get("cost_usd") else "",
                     (n.get("error") or "")[:120]))
    print_table(("node", "role", "status", "reused", "attempts", "ms", "tokens", "cost $", "error"), rows,
                title=f"run {run['run_id']} ({run['status']})")


# Beyond this many rows a table is printed as plain aligned text: rich measures every cell of
# a table to lay it out, ~1 ms a row, so `show` of a 100k-node run took 105 s.
RICH_TABLE_ROWS = 500


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """Rows under their headers, as rich lays out a table without borders; a long table in
    the same columns, aligned, without rich's measuring (and without its wrapping of wide
    columns to the terminal)."""
    if len(rows) <= RICH_TABLE_ROWS:
        from rich.table import Table
        table = Table(*headers, title=title, box=None)
        for row in rows:
            table.add_row(*row)
        _console().print(table)
        return
    from rich.cells import cell_len

    def width(text: str) -> int:
        return len(text) if text.isascii() else cell_len(text)

    widths = [max(width(h), *(width(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [] if title is None else [" " * ((sum(widths) + 2 * len(widths) - width(title)) // 2) + title]
    for row in (headers, *rows):
        lines.append(" " + "  ".join(cell + " " * (w - width(cell)) for cell, w in zip(row, widths)).rstrip())
    print(escape_surrogates("\n".join(lines)))


def print_node(node: dict, as_json: bool) -> None:
    """A node's row, then its conversation message by message, then its result."""
    # escaped: a tool may have answered with undecodable file names
    print(escape_surrogates(rows_json(node) + "\n" if as_json else node_text(node)), end="")


def node_text(node: dict) -> str:
    tokens = (node.get("prompt_tokens") or 0) + (node.get("completion_tokens") or 0)
    facts = [node.get("role") and f"role {node['role']}", node["status"], node["cached"] and "reused",
             _plural(node.get("attempts") or 0, "attempt"), tokens and _plural(tokens, "token")]
    lines = [f"node {node['node']} ({', '.join(str(f) for f in facts if f)})"]
    if node.get("workflow"):
        lines.append(f"workflow  {node['workflow']}")
    if node.get("error"):
        lines.append(f"error: {node['error']}")
    for m in node["messages"]:
        lines.append(f"--- {_message_title(m)}")
        lines += _message_lines(m)
    if "result" in node:
        lines += ["--- result", json.dumps(node["result"], indent=2, ensure_ascii=False)]
    return "\n".join(lines) + "\n"


def _message_lines(message: dict) -> list[str]:
    """A message's text and tool calls, as `show` and `agents show` print them."""
    lines = [str(message["content"])] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        lines.append(f"call {call['function']['name']}({call['function']['arguments']})  [{call['id']}]")
    return lines


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _message_title(message: dict) -> str:
    role = message.get("role")
    if role == "tool":
        return f"tool result {message.get('name', '')}  [{message.get('tool_call_id', '')}]"
    if role == "user" and message.get("repair"):
        return "user (repair request)"
    return str(role)


def _console():
    """A console that never truncates node ids when stdout is a pipe or a file."""
    import sys

    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=240)


# ---------------------------------------------------------------- agents created at run time

def created_agents(db: str) -> list[dict]:
    """Every version of every agent created at run time, as the `agents` view has them."""
    with _reader(db) as store:
        return store.agent_versions()


def agent_tree(versions: list[dict]) -> list[dict]:
    """Who created whom: one entry per creator that is no created agent (a declared role), each
    with `created`: its agents (latest recipe, every version number), each with theirs."""
    agents: dict[str, dict] = {}
    for v in versions:  # by name and version: the last one is the latest
        entry = agents.setdefault(v["name"], {"name": v["name"], "creator": v["creator"], "versions": [],
                                              "created": []})
        entry["versions"].append(v["version"])
        entry.update({k: v[k] for k in ("instructions", "tools", "model", "depth")})
    roots: dict[str, dict] = {}
    for entry in agents.values():
        parent = agents.get(entry["creator"])
        if parent is None:
            parent = roots.setdefault(entry["creator"], {"name": entry["creator"], "created": []})
        parent["created"].append(entry)
    return list(roots.values())


def tree_text(tree: list[dict]) -> str:
    """`agents --tree`: each declared role, then the agents it created, indented under their creator."""
    if not tree:
        return "no agents created yet (a role with `spawn = true` creates them)\n"
    lines: list[str] = []

    def agent(entry: dict, indent: str, last: bool) -> None:
        versions = ", ".join(f"v{n}" for n in entry["versions"])
        tools = ", ".join(entry["tools"]) or "no tools"
        model = entry["model"] or "its creator's model"
        lines.append(f"{indent}{'└── ' if last else '├── '}{entry['name']}  ({versions}; {tools}; {model})")
        for i, child in enumerate(entry["created"]):
            agent(child, indent + ("    " if last else "│   "), i == len(entry["created"]) - 1)

    for root in tree:
        lines.append(root["name"])
        for i, entry in enumerate(root["created"]):
            agent(entry, "", i == len(root["created"]) - 1)
    return "\n".join(lines) + "\n"


def print_tree(tree: list[dict], as_json: bool) -> None:
    """`agents --tree [--json]`."""
    print(rows_json(tree) if as_json else tree_text(tree), end="\n" if as_json else "")
