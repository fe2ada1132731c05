"""What the compiler hands on: the plan's JSON data and the parts of its display graph.

Apart from the lowering (plan.py) that builds them, so that a plan read back from the plan
cache needs none of the compiler's phases, nor their imports.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from . import schema
from .hashing import canonical_json, digest

if TYPE_CHECKING:
    import networkx as nx


@dataclass
class GraphParts:
    """Nodes and labelled edges as the lowering finds them; networkx (slow to import)
    is loaded only when someone asks for `Plan.graph`."""

    nodes: dict[str, dict] = field(default_factory=dict)
    edges: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add_node(self, node_id: str, **attrs) -> None:
        self.nodes.setdefault(node_id, {}).update(attrs)

    def add_edge(self, src: str, dst: str, label: str) -> None:
        labels = self.edges.setdefault((src, dst), [])
        if label not in labels:
            labels.append(label)


@dataclass(frozen=True)
class Plan:
    """The compiled plan: canonical JSON data, its hash, plus its DAG of node templates."""

    data: schema.Plan
    parts: GraphParts = field(repr=False, compare=False)
    plan_hash: str = field(repr=False, compare=False)  # names the plan in the store; see `of`

    @classmethod
    def of(cls, data: schema.Plan, parts: GraphParts) -> "Plan":
        """A plan with its hash: the digest of its canonical JSON, computed once here (0.1 s for
        a 10k-step plan), so that the plan cache keeps it beside the plan."""
        return cls(data, parts, digest("plan", canonical_json(data)))

    @cached_property
    def graph(self) -> "nx.DiGraph":
        import networkx as nx
        graph: nx.DiGraph = nx.DiGraph()
        for node_id, attrs in self.parts.nodes.items():
            graph.add_node(node_id, **attrs)
        for (src, dst), labels in self.parts.edges.items():
            graph.add_edge(src, dst, labels=list(labels))
        return graph

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
