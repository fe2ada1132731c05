"""A run's graph as SVG: the plan's calls and loops, coloured by the run's statuses.

Three pure stages. `template_edges` reads which node feeds which from the plan's expressions;
`run_graph` lays the run over it, one box per template node, where a fan-out (the calls of
a `for` body or `repeat` iteration) is one box with counts by status unless the page asked
to expand it; `to_svg` draws that through Graphviz `dot` when it is installed, and with a
layered layout (networkx topological generations) otherwise. Every box is an SVG
`<g class="node" id="n:NODE">`, whichever drew it, so the page's script finds it.
"""
from __future__ import annotations

import html
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from agentflow.compiler.names import STATUS_COLORS, template_id

COLORS = {**STATUS_COLORS, "not started": "#ffffff"}
# The status a fan-out's box takes: the first of these that any of its instances has.
PRECEDENCE = ("failed", "waiting", "running", "pending", "cancelled", "succeeded", "cached", "skipped")
EXPAND_LIMIT = 200  # instances drawn for one expanded fan-out; the details list them all
DOT_TIMEOUT_S = 10


# ---------------------------------------------------------------- the plan's edges

def refs(expr: Any) -> Iterator[tuple[str, str]]:
    """("name", n) and ("node", id) for each name read and call made in an IR expression."""
    if not isinstance(expr, list):
        return
    if len(expr) == 2 and expr[0] in ("name", "node") and isinstance(expr[1], str):
        yield expr[0], expr[1]
        return
    for part in expr:
        yield from refs(part)


@dataclass
class Body:
    """A block's bindings and what else its names can mean."""

    bindings: dict
    parent: str | None  # the enclosing body's prefix (None: a choreography's own names only)
    owner: str | None = None  # the `for`/`repeat`/sub-choreography node whose body it is
    var: str | None = None  # a `for` variable
    repeat: bool = False  # `prev` is the previous iteration
    params: set = field(default_factory=set)


def bodies(plan: dict) -> dict[str, Body]:
    """Each body's prefix (`main`, `main/reviews[*]`, `main/loop#*`) -> its Body."""
    entry = plan["entry"]
    out = {entry: Body(plan["body"]["bindings"], None, params={p["name"] for p in plan["params"]})}
    for nid, node in plan["nodes"].items():
        parent = node.get("scope") or entry
        if node["kind"] == "for":
            out[f"{nid}[*]"] = Body(node["body"]["bindings"], parent, nid, var=node["var"])
        elif node["kind"] == "repeat":
            out[f"{nid}#*"] = Body(node["body"]["bindings"], parent, nid, repeat=True)
        elif node["kind"] == "choreography":
            out[nid] = Body(node["body"]["bindings"], None, nid, params=set(node.get("args", {})))
    return out


def node_inputs(node: dict) -> list:
    return [*node.get("args", {}).values(), *([node["iter"]] if "iter" in node else [])]


def template_edges(plan: dict) -> set[tuple[str, str]]:
    """(source, target) template node ids: what each call, loop and parameter feeds."""
    scopes = bodies(plan)
    entry = plan["entry"]
    edges = set()
    for nid, node in plan["nodes"].items():
        scope = node.get("scope") or entry
        for expr in node_inputs(node):
            edges |= {(src, nid) for src in sources(expr, scope, scopes, entry, set()) if src != nid}
    return edges


def sources(expr: Any, scope: str, scopes: dict[str, Body], entry: str, seen: set) -> set[str]:
    """The nodes (and entry parameters) an expression's value comes from, through bindings."""
    found = set()
    for kind, ref in refs(expr):
        if kind == "node":
            found.add(ref)
            continue
        prefix: str | None = scope
        while prefix is not None:
            body = scopes[prefix]
            if ref in body.bindings:
                if (prefix, ref) not in seen:
                    seen.add((prefix, ref))
                    found |= sources(body.bindings[ref]["expr"], prefix, scopes, entry, seen)
                break
            if body.owner and (ref == body.var or (body.repeat and ref == "prev") or ref in body.params):
                found.add(body.owner)
                break
            if ref in body.params:
                found.add(f"{entry}/{ref}")
                break
            prefix = body.parent
    return found


# ---------------------------------------------------------------- the run over it

@dataclass(frozen=True)
class Box:
    id: str  # a template id (collapsed, or not fanned out) or an instance id (expanded)
    label: str
    status: str
    counts: dict  # status -> instances, for a collapsed fan-out; {} otherwise
    fan_out: bool


def fanned_out(tid: str) -> bool:
    return "[*]" in tid or "#*" in tid


def aggregate(counts: Counter) -> str:
    return next((s for s in PRECEDENCE if counts.get(s)), next(iter(counts), "not started"))


def short_label(tid: str, node: dict | None) -> str:
    name = tid.rsplit("/", 1)[-1]
    if node is None:
        return name
    what = node.get("target") or node["kind"]
    return f"{name} = {what}"


def run_graph(plan: dict | None, statuses: dict[str, str], expand: set[str]) -> tuple[list[Box], set]:
    """The boxes and edges of a run's graph. Without a plan (a run from before runs stored
    theirs) the boxes are the run's nodes, without edges."""
    templates: dict[str, dict | None] = dict(plan["nodes"]) if plan else {}
    if plan:
        templates.update({f"{plan['entry']}/{p['name']}": {"kind": "param"} for p in plan["params"]})
    instances: dict[str, list[str]] = {}
    for iid in sorted(statuses):
        instances.setdefault(template_id(iid), []).append(iid)
        templates.setdefault(template_id(iid), None)  # a node the plan lacks
    boxes: list[Box] = []
    shown: dict[str, list[str]] = {}  # template id -> its box ids
    for tid in sorted(templates):
        node, mine = templates[tid], instances.get(tid, [])
        label = short_label(tid, node)
        if fanned_out(tid) and tid in expand:
            shown[tid] = mine[:EXPAND_LIMIT]
            boxes += [Box(iid, f"{label}\n{iid}", statuses[iid], {}, False)
                      for iid in shown[tid]]
        elif fanned_out(tid):
            counts = Counter(statuses[i] for i in mine)
            boxes.append(Box(tid, label, aggregate(counts), dict(sorted(counts.items())), True))
            shown[tid] = [tid]
        else:
            status = "parameter" if node and node.get("kind") == "param" else (
                statuses[mine[0]] if mine else "not started")
            boxes.append(Box(tid, label, status, {}, False))
            shown[tid] = [tid]
    edges = {(a, b) for src, dst in (template_edges(plan) if plan else ())
             for a in shown.get(src, []) for b in shown.get(dst, []) if same_items(a, b)}
    return boxes, edges


def same_items(a: str, b: str) -> bool:
    """Whether two boxes belong to the same item and iteration where both name one: an
    expanded `reviews[0]/code` feeds `reviews[0]/review`, not `reviews[1]/review`."""
    for x, y in zip(a.split("/"), b.split("/")):
        if template_id(x) != template_id(y):
            return True
        if x != y and "*" not in x + y:
            return False
    return True


# ---------------------------------------------------------------- SVG

def box_lines(box: Box) -> list[str]:
    counts = ", ".join(f"{n} {s}" for s, n in box.counts.items())
    if box.fan_out:
        return [box.label, f"[{sum(box.counts.values())}] {counts}" if counts else "[0] not started"]
    return [*box.label.split("\n"), box.status]


def to_svg(boxes: list[Box], edges: set) -> str:
    if shutil.which("dot"):
        try:
            return dot_svg(boxes, edges)
        except (OSError, subprocess.SubprocessError):
            pass  # a broken Graphviz: the drawing below needs none
    return layered_svg(boxes, edges)


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(boxes: list[Box], edges: set) -> str:
    lines = ["digraph run {", '  graph [rankdir=TB, fontname="Helvetica", bgcolor="transparent"];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for b in boxes:
        lines.append(f"  {_dot_str(b.id)} [id={_dot_str('n:' + b.id)}, label={_dot_str(chr(10).join(box_lines(b)))}, "
                     f"fillcolor={_dot_str(COLORS.get(b.status, '#ffffff'))}, "
                     f"peripheries={2 if b.fan_out else 1}, tooltip={_dot_str(b.id)}];")
    lines += [f"  {_dot_str(a)} -> {_dot_str(b)};" for a, b in sorted(edges)]
    return "\n".join(lines + ["}"]) + "\n"


def dot_svg(boxes: list[Box], edges: set) -> str:
    done = subprocess.run(["dot", "-Tsvg"], input=to_dot(boxes, edges), capture_output=True, text=True,
                          timeout=DOT_TIMEOUT_S, check=True)
    return done.stdout[done.stdout.index("<svg"):]  # inline in the page: no XML prolog


BOX_W, BOX_H, GAP_X, GAP_Y, LINE_H = 230, 56, 30, 50, 14


def layers(boxes: list[Box], edges: set) -> list[list[str]]:
    """Rows of box ids, each after the rows that feed it."""
    import networkx as nx
    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(b.id for b in boxes)
    graph.add_edges_from(edges)
    try:
        return [sorted(row) for row in nx.topological_generations(graph)]
    except nx.NetworkXUnfeasible:  # a cycle cannot come from a plan; draw one row per box
        return [[b.id] for b in boxes]


def layered_svg(boxes: list[Box], edges: set) -> str:
    rows = layers(boxes, edges)
    by_id = {b.id: b for b in boxes}
    width = float(max(len(r) for r in rows) * (BOX_W + GAP_X) + GAP_X if rows else BOX_W)
    at: dict[str, tuple[float, float]] = {}
    for depth, row in enumerate(rows):
        x0 = (width - len(row) * (BOX_W + GAP_X) + GAP_X) / 2
        for i, bid in enumerate(row):
            at[bid] = (x0 + i * (BOX_W + GAP_X), GAP_Y / 2 + depth * (BOX_H + GAP_Y))
    height = len(rows) * (BOX_H + GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}pt" height="{height:.0f}pt" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica" font-size="10">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>']
    for a, b in sorted(edges):
        (xa, ya), (xb, yb) = at[a], at[b]
        out.append(f'<g class="edge"><line x1="{xa + BOX_W / 2:.0f}" y1="{ya + BOX_H:.0f}" x2="{xb + BOX_W / 2:.0f}" '
                   f'y2="{yb:.0f}" stroke="#495057" marker-end="url(#arrow)"/></g>')
    for bid, (x, y) in at.items():
        box = by_id[bid]
        lines = box_lines(box)
        top = y + BOX_H / 2 - (len(lines) - 1) / 2 * LINE_H + 4  # the lines centred in the box
        texts = "".join(f'<text x="{x + BOX_W / 2:.0f}" y="{top + i * LINE_H:.0f}" text-anchor="middle">'
                        f'{html.escape(line[:40])}</text>' for i, line in enumerate(lines))
        out.append(f'<g class="node" id="{html.escape("n:" + bid)}"><title>{html.escape(bid)}</title>'
                   f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
                   f'fill="{COLORS.get(box.status, "#ffffff")}" stroke="#495057" '
                   f'stroke-width="{2 if box.fan_out else 1}"/>{texts}</g>')
    return "\n".join(out + ["</svg>"]) + "\n"
