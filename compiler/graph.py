"""The plan as a diagram: Mermaid (renders on GitHub), Graphviz DOT, or canonical JSON.

Two stages, like every renderer here: `graph_model` builds a neutral, sorted model (nodes,
edges, clusters) from a `Plan`; one small function per format prints it. The model shows

- calls (`role.task` tasks coloured by role, tools, sub-choreographies as clusters), `for` and
  `repeat` bodies as clusters, data edges labelled with the names they carry;
- the edges the plan's DAG leaves out: data flowing from outer scopes into a body (the `for`
  variable, outer bindings, parameters), a `repeat`'s `prev` (from the previous iteration), its
  `until` condition and a `for` body's `yield`;
- a legend of roles with dashed edges to the tools they are granted and the tasks they may
  delegate to (`role.task` entries).

With `statuses` (instance node id -> status) the model is the expanded run instead: one node per
instance, coloured by status, one cluster per body instance (`main/reviews[0]`,
`main/reviews[0]/attempt#1`), edges mapped from the template edges. Pure: no database access.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from typing import Any, Iterator

from . import ir, schema
from .errors import UsageError
from .names import STATUS_COLORS, template_id
from .compiled import Plan
from .scopes import BINDING, PARAM, PREV, VAR, Scope

FORMATS = ("mermaid", "dot", "json")
IMAGE_FORMATS = ("svg", "png")  # rendered from the DOT text by Graphviz's `dot`

_UNKNOWN_STATUS_COLOR = "#ffffff"
_ROLE_PALETTE = ("#cfe2ff", "#e2d9f3", "#ffe5d0", "#d1f0ee", "#fff3cd", "#f7d6e6", "#dbe7c9", "#e0e0e0")
_KIND_COLORS = {"tool": "#fff3bf", "tool_def": "#fff3bf", "for": "#f1f3f5", "repeat": "#f1f3f5",
                "param": "#ffffff", "value": "#ffffff", "return": "#ffffff", "yield": "#ffffff",
                "choreography": "#f8f9fa"}

ROLES_CLUSTER = "@roles"
STATUS_CLUSTER = "@statuses"

def render_graph(plan: Plan, fmt: str, statuses: dict[str, str] | None = None) -> str:
    """The plan (or, with `statuses`, a run's expanded instances) as mermaid, dot or json text."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown graph format {fmt!r}; expected one of {', '.join(FORMATS)}")
    model = graph_model(plan, statuses)
    return {"mermaid": to_mermaid, "dot": to_dot, "json": to_json}[fmt](model)


def render_image(dot_text: str, image_format: str) -> bytes:
    """DOT text drawn as SVG or PNG by Graphviz's `dot` (an external program, on PATH)."""
    dot = shutil.which("dot")
    if dot is None:
        raise UsageError(f"drawing .{image_format} needs Graphviz's `dot` on PATH: install graphviz "
                         f"(apt-get install graphviz, brew install graphviz), or write .mmd or .dot instead")
    proc = subprocess.run([dot, f"-T{image_format}"], input=dot_text.encode("utf-8"), capture_output=True)
    if proc.returncode != 0:
        problem = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UsageError(f"Graphviz `dot -T{image_format}` failed: {problem[0] if problem else f'exit {proc.returncode}'}")
    return proc.stdout


# ---------------------------------------------------------------- the model

def graph_model(plan: Plan, statuses: dict[str, str] | None = None) -> dict:
    """{"nodes", "edges", "clusters"}, each a sorted list of plain dicts."""
    nodes, edges, clusters = _template(plan)
    if statuses is not None:
        statuses, counts = collapse_fan_outs(statuses)
        nodes, edges, clusters = _expand(plan, nodes, edges, clusters, statuses, counts)
    _add_roles_legend(plan, nodes, edges, clusters)
    if statuses is not None:
        _add_status_legend(nodes, clusters, statuses)
    return {
        "nodes": [nodes[k] for k in sorted(nodes)],
        "edges": [edges[k] for k in sorted(edges)],
        "clusters": [clusters[k] for k in sorted(clusters)],
    }


def _edge(edges: dict, src: str, dst: str, label: str, style: str = "data") -> None:
    key = (src, dst, style)
    e = edges.setdefault(key, {"source": src, "target": dst, "labels": [], "style": style})
    if label not in e["labels"]:
        e["labels"].append(label)
        e["labels"].sort()


def _template(plan: Plan) -> tuple[dict, dict, dict]:
    g = plan.graph
    nodes: dict[str, dict] = {}
    clusters: dict[str, dict] = {}
    for nid, a in g.nodes(data=True):
        kind = a.get("kind")
        if kind == "cluster":
            owner = a.get("parent")
            owner_kind = g.nodes[owner]["kind"] if owner in g else "for"
            label = _loop_label(plan.data["nodes"].get(owner) if owner is not None else None) or a.get("label", nid)
            clusters[nid] = {"id": nid, "kind": owner_kind, "label": label, "parent": a.get("cluster"), "owner": owner}
            continue
        node = {"id": nid, "kind": kind, "label": _node_label(nid, a), "cluster": a.get("cluster"),
                "role": a.get("role") if kind == "task" else None, "status": None}
        if kind == "choreography":
            # A sub-choreography is drawn as a cluster holding its call node and its body.
            clusters[nid] = {"id": nid, "kind": "choreography", "label": f"choreography {a.get('label', nid)}",
                             "parent": a.get("cluster"), "owner": nid}
            node["cluster"] = nid
        nodes[nid] = node
    edges: dict[tuple, dict] = {}
    for src, dst, a in g.edges(data=True):
        for label in a.get("labels", []):
            if not (label == NESTED_VALUE and _is_nested(src)):  # drawn by `_nested_edges`
                _edge(edges, src, dst, label, "order" if label == "after" else "data")
    _scope_edges(plan, nodes, edges)
    return nodes, edges, clusters


def _loop_label(node: schema.Node | None) -> str | None:
    """A `for` or `repeat` body's cluster label, from the loop node that owns it."""
    if node is not None and node["kind"] == "for":
        return f"for {node['var']}"
    if node is not None and node["kind"] == "repeat":
        return f"repeat max {node['max']}"
    return None


def _node_label(nid: str, a: dict) -> str:
    label = a.get("label", nid)
    last = nid.rsplit("/", 1)[-1]
    if a.get("kind") in ("task", "tool", "choreography", "for", "repeat") and "@" not in last:
        return f"{last} = {label}"
    return label


# -------------------------------------------------- edges across scopes

class _Scope(Scope):
    """A scope of plan bindings, placed in the graph: `prefix` is its bindings' id prefix,
    `owner` the node that runs the body, `params` map to the nodes that give them."""

    def __init__(self, parent: "_Scope | None", prefix: str, bindings: dict, var: str | None = None,
                 owner: str | None = None, repeat: bool = False, params: dict[str, str] | None = None,
                 sub: bool = False):
        kind = "repeat" if repeat else "for" if var is not None else "choreography"
        super().__init__(kind, parent, bindings.items(), var=var, params=params)
        self.prefix = prefix
        self.owner = owner
        self.sub = sub  # the inlined body of a sub-choreography called at `owner`


def _refs(expr: Any, bound: frozenset = frozenset()) -> Iterator[tuple[str, str | None]]:
    """(name, first attribute read from it or None) for each free name; does not enter nodes."""
    return _walk_refs(expr, bound)


def _name_ref(name: str, bound: frozenset) -> Iterator[tuple[str, str | None]]:
    if name not in bound:
        yield name, None


def _attr_ref(value: Any, attr: str, bound: frozenset) -> Iterator[tuple[str, str | None]]:
    if value[:1] == ["name"]:
        if value[1] not in bound:
            yield value[1], attr
    else:
        yield from _walk_refs(value, bound)


def _comp_refs(elem: Any, var: str, iter_expr: Any, cond: Any, bound: frozenset) -> Iterator[tuple[str, str | None]]:
    inner = bound | {var}
    yield from _walk_refs(elem, inner)
    yield from _walk_refs(iter_expr, bound)
    if cond is not None:
        yield from _walk_refs(cond, inner)


def _child_refs(expr: Any, bound: frozenset) -> Iterator[tuple[str, str | None]]:
    for child in ir.children(expr):
        yield from _walk_refs(child, bound)


_walk_refs = ir.walker({"name": _name_ref, "attr": _attr_ref, "comp": _comp_refs}, _child_refs)


def _node_ids(expr: Any) -> Iterator[str]:
    """The plan nodes an expression reads directly (not those inside them)."""
    return _walk_node_ids(expr, None)


def _child_node_ids(expr: Any, _context: None) -> Iterator[str]:
    for child in ir.children(expr):
        yield from _walk_node_ids(child, None)


_walk_node_ids = ir.walker({"node": lambda node_id, _context: iter((node_id,))}, _child_node_ids)


NESTED_VALUE = "value"  # the label of the edge from a nested call to what reads its value


def direct_inputs(expr: Any, in_condition: bool = False,
                  bound: frozenset = frozenset()) -> Iterator[tuple[str, str, bool]]:
    """What an expression reads, without entering the nested calls and loops it holds:
    ("name", name, in_condition) for each free name and ("node", node_id, in_condition)
    for each nested node, where `in_condition` says it decides an `x if c else y`."""
    return _walk_direct(expr, (in_condition, bound))


_Reading = tuple[bool, frozenset]  # (inside a condition, the comprehension variables bound)


def _direct_children(expr: Any, reading: _Reading) -> Iterator[tuple[str, str, bool]]:
    for child in ir.children(expr):
        yield from _walk_direct(child, reading)


def _direct_cond(cond: Any, then: Any, orelse: Any, reading: _Reading) -> Iterator[tuple[str, str, bool]]:
    yield from _walk_direct(cond, (True, reading[1]))
    yield from _walk_direct(then, reading)
    yield from _walk_direct(orelse, reading)


def _direct_comp(elem: Any, var: str, iterable: Any, cond: Any, reading: _Reading) -> Iterator[tuple[str, str, bool]]:
    inner = (reading[0], reading[1] | {var})
    yield from _walk_direct(elem, inner)
    yield from _walk_direct(iterable, reading)
    if cond is not None:
        yield from _walk_direct(cond, inner)


_walk_direct = ir.walker({
    "node": lambda node_id, reading: iter((("node", node_id, reading[0]),)),
    "name": lambda name, reading: iter(() if name in reading[1] else (("name", name, reading[0]),)),
    "cond": _direct_cond,
    "comp": _direct_comp,
}, _direct_children)


def _is_nested(node_id: str) -> bool:
    """Whether a node is a call or loop nested in an expression (`main/a@1`), not a binding."""
    return "@" in node_id.rsplit("/", 1)[-1]


def _node_inputs(node: schema.Node) -> list:
    """The expressions a nested node reads in its caller's scope (a `repeat` reads its own)."""
    if node["kind"] == "for":
        return [node["iter"]]
    if node["kind"] == "repeat":
        return []
    return list(node["args"].values())


def _nested_edges(data: schema.Plan, expr: Any, reader: str, siblings: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """(source, reader, label) for what `expr` feeds to `reader`, nested calls included: each
    nested node feeds the innermost call around it (`value`, or `if` as a condition), and
    a sibling binding feeds the innermost call that reads it (`name`, or `if name`)."""
    for kind, what, cond in direct_inputs(expr):
        if kind == "node":
            if what != reader:
                yield what, reader, "if" if cond else NESTED_VALUE
            for arg in _node_inputs(data["nodes"][what]):
                yield from _nested_edges(data, arg, what, siblings)
        elif what in siblings:
            yield siblings[what], reader, f"if {what}" if cond else what


def _link_nested(data: schema.Plan, expr: Any, consumer: str, scope: "_Scope", nodes: dict, edges: dict) -> None:
    """Draws what a binding's nested calls read on those calls: the plan's DAG has the
    binding read it, and the nested calls feed the binding."""
    siblings = {n: f"{scope.prefix}/{n}" for n in scope.bindings if f"{scope.prefix}/{n}" in nodes}
    found = set(_nested_edges(data, expr, consumer, siblings))
    for src, dst, label in sorted(found):
        _edge(edges, src, dst, label)
    for name, src in siblings.items():
        if (src, consumer, name) not in found and any(s == src for s, _dst, _label in found):
            _drop_label(edges, src, consumer, name)


def _drop_label(edges: dict, src: str, dst: str, label: str) -> None:
    e = edges.get((src, dst, "data"))
    if e is not None and label in e["labels"]:
        e["labels"].remove(label)
        if not e["labels"]:
            del edges[(src, dst, "data")]


def _scope_edges(plan: Plan, nodes: dict, edges: dict) -> None:
    data = plan.data
    entry = data["entry"]
    params = {}
    for p in data.get("params", []):
        pid = f"{entry}/{p['name']}"
        if pid in nodes:  # cannot happen in a checked program (E106); never overwrite a call
            continue
        nodes[pid] = {"id": pid, "kind": "param", "label": p["name"], "cluster": None, "role": None, "status": None}
        params[p["name"]] = pid
    root = _Scope(None, entry, data["body"]["bindings"], params=params)
    _walk_body(data, data["body"], root, nodes, edges)


def _walk_body(data: schema.Plan, body: schema.Body, scope: _Scope, nodes: dict, edges: dict) -> None:
    for name, b in sorted(body["bindings"].items()):
        consumer = f"{scope.prefix}/{name}"
        _link_nested(data, b["expr"], consumer, scope, nodes, edges)
        _walk_expr(data, b["expr"], consumer, scope, nodes, edges)
    result = body["result"]
    if result is not None:
        kind = "yield" if scope.var is not None else "return"
        consumer = f"{scope.prefix}/{kind}"
        _link_nested(data, result, consumer, scope, nodes, edges)
        _walk_expr(data, result, consumer, scope, nodes, edges)
        if scope.owner is not None and (scope.var is not None or scope.sub):
            _edge(edges, consumer, scope.owner, kind, "result")


def _walk_expr(data: schema.Plan, expr: ir.Expr, consumer: str, scope: _Scope, nodes: dict, edges: dict) -> None:
    _link_refs(expr, consumer, scope, nodes, edges)
    for nid in sorted(set(_node_ids(expr))):
        node = data["nodes"].get(nid)
        if node is None:
            continue
        if node["kind"] == "task" or node["kind"] == "tool":
            for arg in node["args"].values():
                _walk_expr(data, arg, nid, scope, nodes, edges)
        elif node["kind"] == "choreography":
            for arg in node["args"].values():
                _walk_expr(data, arg, nid, scope, nodes, edges)
            sub_params = {p: nid for p in node["args"]}
            sub = _Scope(None, nid, node["body"]["bindings"], owner=nid, params=sub_params, sub=True)
            _walk_body(data, node["body"], sub, nodes, edges)
        elif node["kind"] == "for":
            _walk_expr(data, node["iter"], nid, scope, nodes, edges)
            inner = _Scope(scope, f"{nid}[*]", node["body"]["bindings"], var=node["var"], owner=nid)
            _walk_body(data, node["body"], inner, nodes, edges)
        elif node["kind"] == "repeat":
            inner = _Scope(scope, f"{nid}#*", node["body"]["bindings"], owner=nid, repeat=True)
            _walk_body(data, node["body"], inner, nodes, edges)
            # `until` reads the iteration's bindings: edges from the body to the repeat node.
            for name, _attr in _refs(node["until"]):
                found = inner.lookup(name)
                if found == (BINDING, inner):
                    _edge(edges, f"{inner.prefix}/{name}", nid, name, "result")
                elif found:
                    _link_ref(name, _attr, nid, inner, found, nodes, edges)
            _walk_expr(data, node["until"], nid, inner, nodes, edges)


def _link_refs(expr: Any, consumer: str, scope: _Scope, nodes: dict, edges: dict) -> None:
    for name, attr in _refs(expr):
        found = scope.lookup(name)
        if found is None:
            continue
        if found == (BINDING, scope):
            continue  # a sibling binding: the plan's DAG already has this edge
        _link_ref(name, attr, consumer, scope, found, nodes, edges)


def _link_ref(name: str, attr: str | None, consumer: str, scope: _Scope, found, nodes: dict, edges: dict) -> None:
    what, owner_scope = found
    if what == BINDING:
        src = f"{owner_scope.prefix}/{name}"
        if src != consumer and src in nodes:
            _edge(edges, src, consumer, name)
    elif what == PARAM:
        _edge(edges, owner_scope.params[name], consumer, name)
    elif what == VAR:
        _edge(edges, owner_scope.owner, consumer, name)
    elif what == PREV:
        if attr is not None and attr in owner_scope.bindings:
            _edge(edges, f"{owner_scope.prefix}/{attr}", consumer, f"prev.{attr}", "prev")
        else:
            _edge(edges, owner_scope.owner, consumer, "prev", "prev")


# ---------------------------------------------------------------- legend

def _add_roles_legend(plan: Plan, nodes: dict, edges: dict, clusters: dict) -> None:
    roles = plan.data.get("roles", {})
    if not roles:
        return
    clusters[ROLES_CLUSTER] = {"id": ROLES_CLUSTER, "kind": "legend", "label": "roles and tools",
                               "parent": None, "owner": None}
    for role in sorted(roles):
        rid = f"role:{role}"
        nodes[rid] = {"id": rid, "kind": "role", "label": f"role {role}", "cluster": ROLES_CLUSTER,
                      "role": role, "status": None}
        for ref in roles[role].get("tools", []):
            if "." in ref:
                tid = f"task:{ref}"
                nodes[tid] = {"id": tid, "kind": "task_def", "label": f"task {ref}", "cluster": ROLES_CLUSTER,
                              "role": ref.split(".", 1)[0], "status": None}
                _edge(edges, rid, tid, "delegates", "grant")
            else:
                tid = f"tool:{ref}"
                nodes[tid] = {"id": tid, "kind": "tool_def", "label": f"tool {ref}", "cluster": ROLES_CLUSTER,
                              "role": None, "status": None}
                _edge(edges, rid, tid, "tool", "grant")


def _add_status_legend(nodes: dict, clusters: dict, statuses: dict[str, str]) -> None:
    clusters[STATUS_CLUSTER] = {"id": STATUS_CLUSTER, "kind": "legend", "label": "status",
                                "parent": None, "owner": None}
    for status in sorted(set(STATUS_COLORS) | set(statuses.values())):
        sid = f"status:{status}"
        nodes[sid] = {"id": sid, "kind": "status", "label": status, "cluster": STATUS_CLUSTER,
                      "role": None, "status": status}


# ---------------------------------------------------------------- expansion

COLLAPSE_ABOVE = 20  # a `for` instance with more items than this is drawn as one box per body node
_ITEM = re.compile(r"\[(\d+)\]")
# The status a collapsed box is coloured by: the first of these that any of its instances has.
_COLLAPSED_STATUS = ("failed", "running", "pending", "cancelled", "succeeded", "cached", "skipped")


def collapse_fan_outs(statuses: dict[str, str], limit: int = COLLAPSE_ABOVE) -> tuple[dict[str, str], dict[str, str]]:
    """The instances of each `for` with more than `limit` items merged into one per body node.

    Returns the statuses with `main/reviews[0]/code` ... `main/reviews[1999]/code` replaced by
    `main/reviews[*]/code` (coloured by its most pressing status), and, per merged id, the text
    `main/reviews[0..1999]/code: 1990 succeeded, 10 failed`."""
    items: dict[str, set[int]] = {}  # `for` instance id -> its item indices
    for iid in statuses:
        for item in _ITEM.finditer(iid):
            items.setdefault(iid[:item.start()], set()).add(int(item.group(1)))
    big = {f: (min(idx), max(idx)) for f, idx in items.items() if len(idx) > limit}
    if not big:
        return statuses, {}
    kept: dict[str, str] = {}
    merged: dict[str, Counter[str]] = {}
    spans: dict[str, str] = {}
    for iid, status in statuses.items():
        m = next((m for m in _ITEM.finditer(iid) if iid[:m.start()] in big), None)
        if m is None:
            kept[iid] = status
            continue
        fan_out, rest = iid[:m.start()], template_id(iid[m.end():])
        merged.setdefault(fan_out + "[*]" + rest, Counter())[status] += 1
        first, last = big[fan_out]
        spans[fan_out + "[*]" + rest] = f"{fan_out}[{first}..{last}]{rest}"
    texts = {}
    for mid, tally in merged.items():
        kept[mid] = next(s for s in (*_COLLAPSED_STATUS, *sorted(tally)) if s in tally)
        by_count = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
        texts[mid] = f"{spans[mid]}: " + ", ".join(f"{n} {status}" for status, n in by_count)
    return kept, texts


def _segments(node_id: str | None) -> int:
    return 0 if node_id is None else node_id.count("/") + 1


def _prefix(instance_id: str, n: int) -> str:
    return "/".join(instance_id.split("/")[:n])


def _chain(tid: str, nodes: dict, clusters: dict) -> list[str]:
    """Enclosing template clusters of a template node, innermost first."""
    out = []
    c = nodes[tid]["cluster"] if tid in nodes else None
    while c is not None and c not in out:
        out.append(c)
        c = clusters[c]["parent"] if c in clusters else None
    return out


def _expand(plan: Plan, tnodes: dict, tedges: dict, tclusters: dict, statuses: dict[str, str],
            counts: dict[str, str]):
    nodes: dict[str, dict] = {}
    clusters: dict[str, dict] = {}
    by_template: dict[str, list[str]] = {}
    programs: list[tuple[str, str]] = []  # (task call, program) edges
    for iid in sorted(statuses):
        tid = template_id(iid)
        t = tnodes.get(tid)
        by_template.setdefault(tid, []).append(iid)
        program = _PROGRAM.match(iid) if t is None else None
        if program is not None:  # a model's program: its own box under the task call that ran it
            caller, root = program.group(1), program.group(0)
            if root not in clusters:
                clusters[root] = {"id": root, "kind": "program", "label": f"{root.rsplit('/', 1)[-1]} of {caller}",
                                  "parent": nodes[caller]["cluster"] if caller in nodes else None, "owner": caller}
                programs.append((caller, root))
            nodes[iid] = {"id": iid, "kind": "program" if iid == root else "unknown", "cluster": root,
                          "label": f"{iid[len(root) + 1:] or root.rsplit('/', 1)[-1]}\n{counts.get(iid, iid)}", "role": None,
                          "status": statuses[iid]}
            continue
        tcluster = t["cluster"] if t else _guess_cluster(tid, tclusters)
        icluster = _prefix(iid, _segments(tcluster)) if tcluster else None
        label = t["label"] if t else iid.rsplit("/", 1)[-1]
        nodes[iid] = {"id": iid, "kind": t["kind"] if t else "unknown", "label": f"{label}\n{counts.get(iid, iid)}",
                      "cluster": icluster, "role": t["role"] if t else None, "status": statuses[iid]}
        while tcluster is not None and icluster is not None and icluster not in clusters:
            tc = tclusters[tcluster]
            clusters[icluster] = {"id": icluster, "kind": tc["kind"],
                                  "label": f"{tc['label']}: {icluster.rsplit('/', 1)[-1]}",
                                  "parent": _prefix(iid, _segments(tc["parent"])) if tc["parent"] else None,
                                  "owner": _prefix(iid, _segments(tc["owner"])) if tc["owner"] else None}
            tcluster, icluster = tc["parent"], clusters[icluster]["parent"]
    # Template nodes that are not instances (e.g. parameters) stay as they are.
    for tid, t in tnodes.items():
        if t["kind"] == "param" and tid not in nodes:
            nodes[tid] = dict(t)
            by_template.setdefault(tid, []).append(tid)
    edges: dict[tuple, dict] = {}
    for (src, dst, style), e in sorted(tedges.items()):
        if src not in by_template or dst not in by_template:
            continue
        common = [c for c in _chain(src, tnodes, tclusters) if c in set(_chain(dst, tnodes, tclusters))]
        k = _segments(common[0]) if common else 0
        for b in by_template[dst]:
            for a in by_template[src]:
                if style == "prev":
                    ok = (k > 0 and _prefix(a, k - 1) == _prefix(b, k - 1)
                          and _iteration(a, k) + 1 == _iteration(b, k))
                else:
                    ok = _prefix(a, k) == _prefix(b, k)
                if ok:
                    for label in e["labels"]:
                        _edge(edges, a, b, label, style)
    for caller, root in programs:
        if caller in nodes and root in nodes:
            _edge(edges, caller, root, "run_program")
    return nodes, edges, clusters


# The program a node id lies in, and the task call that ran it (the last, when programs nest).
_PROGRAM = re.compile(r"(.*)/program#\d+")


def _iteration(instance_id: str, k: int) -> int:
    seg = instance_id.split("/")[k - 1]
    m = re.search(r"#(\d+)$", seg)
    return int(m.group(1)) if m else -1


def _guess_cluster(tid: str, tclusters: dict) -> str | None:
    """The innermost template cluster that is a path prefix of an unknown template id."""
    best = None
    for c in tclusters:
        if tid.startswith(c + "/") and (best is None or len(c) > len(best)):
            best = c
    return best


# ---------------------------------------------------------------- printers

def to_json(model: dict) -> str:
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _fill(node: dict, role_colors: dict[str, str]) -> str:
    if node["status"] is not None:
        return STATUS_COLORS.get(node["status"], _UNKNOWN_STATUS_COLOR)
    if node["role"] is not None and node["kind"] in ("task", "role", "task_def"):
        return role_colors.get(node["role"], "#ffffff")
    return _KIND_COLORS.get(node["kind"], "#ffffff")


def _role_colors(model: dict) -> dict[str, str]:
    roles = sorted({n["role"] for n in model["nodes"] if n["role"] is not None})
    return {r: _ROLE_PALETTE[i % len(_ROLE_PALETTE)] for i, r in enumerate(roles)}


def _children(model: dict) -> tuple[dict, dict]:
    """cluster id (None = top level) -> sorted child cluster ids / node ids."""
    sub: dict[str | None, list[str]] = {}
    members: dict[str | None, list[str]] = {}
    for c in model["clusters"]:
        sub.setdefault(c["parent"], []).append(c["id"])
    for n in model["nodes"]:
        members.setdefault(n["cluster"], []).append(n["id"])
    return sub, members


# Mermaid ----------------------------------------------------------

_MERMAID_SHAPES = {
    "task": ('["', '"]'), "task_def": ('["', '"]'), "tool": ('[["', '"]]'), "tool_def": ('[["', '"]]'),
    "choreography": ('[["', '"]]'), "for": ('{{"', '"}}'), "repeat": ('{{"', '"}}'),
    "value": ('("', '")'), "return": ('(["', '"])'), "yield": ('(["', '"])'),
    "param": ('[/"', '"/]'), "role": ('(("', '"))'), "status": ('("', '")'),
}


def _mermaid_text(text: str) -> str:
    """A label for inside double quotes; Mermaid decodes `#name;` / `#code;` entities."""
    out = (text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
           .replace("`", "#96;").replace("|", "#124;"))
    return out.replace("\n", "<br/>")


def _class_name(prefix: str, value: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", value)


def to_mermaid(model: dict) -> str:
    ids = {n["id"]: f"n{i}" for i, n in enumerate(model["nodes"])}
    cids = {c["id"]: f"s{i}" for i, c in enumerate(model["clusters"])}
    labels = {c["id"]: c["label"] for c in model["clusters"]}
    sub, members = _children(model)
    by_id = {n["id"]: n for n in model["nodes"]}
    lines = ["flowchart TD"]

    def emit(cluster: str | None, depth: int) -> None:
        pad = "  " * depth
        for nid in members.get(cluster, []):
            n = by_id[nid]
            open_, close = _MERMAID_SHAPES.get(n["kind"], ('["', '"]'))
            lines.append(f"{pad}{ids[nid]}{open_}{_mermaid_text(n['label'])}{close}")
        for cid in sub.get(cluster, []):
            lines.append(f'{pad}subgraph {cids[cid]}["{_mermaid_text(labels[cid])}"]')
            emit(cid, depth + 1)
            lines.append(f"{pad}end")

    emit(None, 1)
    arrows = {"data": "-->", "result": "-->", "order": "-.->", "prev": "-.->", "grant": "-.->"}
    for e in model["edges"]:
        label = ", ".join(e["labels"])
        lines.append(f'  {ids[e["source"]]} {arrows.get(e["style"], "-->")}|"{_mermaid_text(label)}"| {ids[e["target"]]}')
    role_colors = _role_colors(model)
    classes: dict[str, tuple[str, list[str]]] = {}
    for n in model["nodes"]:
        if n["status"] is not None:
            name = _class_name("status_", n["status"])
        elif n["role"] is not None and n["kind"] in ("task", "role", "task_def"):
            name = _class_name("role_", n["role"])
        else:
            name = _class_name("kind_", n["kind"])
        classes.setdefault(name, (_fill(n, role_colors), []))[1].append(ids[n["id"]])
    for name in sorted(classes):
        fill, members_ = classes[name]
        lines.append(f"  classDef {name} fill:{fill},stroke:#495057,color:#212529")
        lines.append(f"  class {','.join(members_)} {name}")
    return "\n".join(lines) + "\n"


# DOT --------------------------------------------------------------

_DOT_SHAPES = {"task": "box", "task_def": "box", "tool": "component", "tool_def": "component",
               "choreography": "box3d", "for": "hexagon", "repeat": "hexagon", "value": "ellipse",
               "return": "doublecircle", "yield": "circle", "param": "parallelogram", "role": "oval",
               "status": "box"}


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(model: dict) -> str:
    sub, members = _children(model)
    by_id = {n["id"]: n for n in model["nodes"]}
    cl = {c["id"]: c for c in model["clusters"]}
    role_colors = _role_colors(model)
    lines = ["digraph agentflow {",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=11];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, fillcolor="#ffffff"];',
             '  edge [fontname="Helvetica", fontsize=9];']

    def emit(cluster: str | None, depth: int) -> None:
        pad = "  " * depth
        for nid in members.get(cluster, []):
            n = by_id[nid]
            shape = _DOT_SHAPES.get(n["kind"], "box")
            lines.append(f"{pad}{_dot_str(nid)} [label={_dot_str(n['label'])}, shape={shape}, "
                         f"fillcolor={_dot_str(_fill(n, role_colors))}];")
        for cid in sub.get(cluster, []):
            c = cl[cid]
            style = "dashed" if c["kind"] == "legend" else "rounded"
            lines.append(f"{pad}subgraph {_dot_str('cluster_' + cid)} {{")
            lines.append(f"{pad}  label={_dot_str(c['label'])}; style={_dot_str(style)};")
            emit(cid, depth + 1)
            lines.append(f"{pad}}}")

    emit(None, 1)
    for e in model["edges"]:
        attrs = [f"label={_dot_str(', '.join(e['labels']))}"]
        if e["style"] in ("order", "prev", "grant"):
            attrs.append("style=dashed")
        if e["style"] in ("prev", "result"):
            attrs.append("constraint=false")
        lines.append(f"  {_dot_str(e['source'])} -> {_dot_str(e['target'])} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
