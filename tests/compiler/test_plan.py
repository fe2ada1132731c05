"""The compiled plan: snapshots of every example, stable ids, and definition hashes
that change for exactly the node whose definition changed.

A plan snapshot shows the structure with each hash as `<hash>`; the hashes (first 12 hex
digits) have one snapshot of their own, so a structure change reads as one, not as 50
changed hashes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentflow.compiler.pipeline import compile_source
from agentflow.compiler.source import SourceFile

SPECS = sorted(Path(__file__).resolve().parents[2].joinpath("specs").glob("*.agentflow"))
PROJECT = next(p for p in SPECS if p.stem == "build_project")


def _compile(text: str, name: str = "spec.agentflow"):
    result = compile_source(SourceFile(name, text))
    assert result.ok, [d.message for d in result.diagnostics]
    return result.plan


_HASH = re.compile(r'"definition_hash": "([0-9a-f]{64})"')


def _spec_plan(spec: Path):
    return _compile(spec.read_text(), f"specs/{spec.name}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_plan_snapshot(spec: Path, snapshot) -> None:
    assert _HASH.sub('"definition_hash": "<hash>"', _spec_plan(spec).to_json()) == snapshot


def _all_hashes(data, path: str = "") -> dict[str, str]:
    """Every `definition_hash` in a plan (of its tasks, tools and nodes), by where it stands."""
    if isinstance(data, list):
        data = {str(i): x for i, x in enumerate(data)}
    if not isinstance(data, dict):
        return {}
    found = {path: data["definition_hash"]} if "definition_hash" in data else {}
    for key, value in data.items():
        found |= _all_hashes(value, f"{path}/{key}" if path else key)
    return found


def test_definition_hashes_snapshot(snapshot) -> None:
    """Every example's hashes, short: a change to hashing shows here, once per hash."""
    hashes = {spec.stem: _all_hashes(_spec_plan(spec).data) for spec in SPECS}
    texts = "".join(_spec_plan(spec).to_json() for spec in SPECS)
    assert sum(map(len, hashes.values())) == len(_HASH.findall(texts))  # the plan snapshots hide no other
    assert {stem: {where: h[:12] for where, h in found.items()} for stem, found in hashes.items()} == snapshot


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_plan_is_canonical_and_has_no_absolute_paths(spec: Path) -> None:
    first = _compile(spec.read_text(), str(spec.resolve())).to_json()
    second = _compile(spec.read_text(), str(spec.resolve())).to_json()
    assert first == second
    assert str(spec.parent.resolve()) not in first
    data = json.loads(first)
    assert list(data) == sorted(data)


def test_node_ids_come_from_structure() -> None:
    plan = _compile(PROJECT.read_text())
    assert set(plan.data["nodes"]) == {
        "main/plan", "main/reviews", "main/reviews[*]/attempt",
        "main/reviews[*]/attempt#*/code", "main/reviews[*]/attempt#*/review"}


def _task_hashes(plan) -> dict[str, str]:
    return {nid: n["definition_hash"] for nid, n in plan.data["nodes"].items() if "definition_hash" in n}


def _edit_prompts(text: str):
    """Each variant of the spec with exactly one prompt changed, and the task it belongs to."""
    for match in re.finditer(r"task (\w+)\(", text):
        prompt_at = text.index("prompt = ", match.end())
        opening = text.index('"', prompt_at)
        opening += 3 if text.startswith('"""', opening) else 1
        yield match.group(1), text[:opening] + "EDITED " + text[opening:]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_editing_one_prompt_changes_exactly_that_nodes_hash(spec: Path) -> None:
    text = spec.read_text()
    before = _task_hashes(_compile(text))
    edits = list(_edit_prompts(text))
    assert edits
    for task, edited in edits:
        after = _task_hashes(_compile(edited))
        changed = {nid for nid in before if before[nid] != after[nid]}
        plan = _compile(edited)
        calls_of_task = {nid for nid, n in plan.data["nodes"].items()
                         if n["kind"] == "task" and n["target"].split(".")[1] == task}
        assert changed == calls_of_task, task


def test_comments_whitespace_and_declaration_order_do_not_change_hashes() -> None:
    text = PROJECT.read_text()
    shuffled = "# a new comment\n\n" + text.replace("  retries = 2", "  retries = 2   # comment")
    assert _task_hashes(_compile(text)) == _task_hashes(_compile(shuffled))


def test_model_and_decoding_parameters_are_part_of_the_hash() -> None:
    text = PROJECT.read_text()
    base = _task_hashes(_compile(text))
    warmer = _task_hashes(_compile(text.replace('replicas = 3', 'replicas = 3\n  temperature = 0.9')))
    assert {n for n in base if base[n] != warmer[n]} == {"main/reviews[*]/attempt#*/code"}
