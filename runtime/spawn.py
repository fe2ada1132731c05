"""Agents created at run time (`spawn = true` on a role).

The role's model is offered three function tools (`schema.SPAWN_TOOLS`): `create_agent`
stores a recipe (name, instructions, a subset of the creator's own tools, optionally a model),
versioned and namespaced by its creator (`architect/math_solver`); `call_agent` runs one call of
the latest version as a nested task call, a node of its own (`<caller>/agent:<name>#<n>`)
journaled, reused by key and resumed like any other; `list_agents` lists the creator's agents.
A created agent may create agents in turn, down to `max_spawn_depth`.

Everything that goes wrong here is the calling model's to handle: a bad recipe, an unknown
agent, or a created agent that failed after its retries is the tool's result, never a failed
run.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from agentflow.compiler import schema
from agentflow.compiler.hashing import definition_hash

from .engine import Engine, NodeFailure
from .human import is_human
from .store import AgentRecipe

if TYPE_CHECKING:
    from .task import TaskCall

AGENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_NAME = {"type": "string", "description": "the agent's name: letters, digits and _ (at most 64)"}
GRANTS: tuple[schema.ToolGrant, ...] = (
    {"name": "create_agent", "spawn": "create_agent",
     "description": "Create an agent of your own, or a new version of one: its instructions (its system "
                    "prompt) and the tools it may use, a subset of your own tools. Creating the same recipe "
                    "again changes nothing. Returns the agent's name and version.",
     "parameters": {"type": "object", "properties": {
         "name": _NAME,
         "instructions": {"type": "string", "description": "what the agent is and how it works"},
         "tools": {"type": "array", "items": {"type": "string"},
                   "description": "names of your own tools the agent may use (may be empty)"},
         "model": {"type": "string", "description": "optional: a model other than yours, one the workflow uses"}},
         "required": ["name", "instructions", "tools"]}},
    {"name": "call_agent", "spawn": "call_agent",
     "description": "Ask one of your agents (the latest version of it) to do something; returns its answer, "
                    "or an error if it failed.",
     "parameters": {"type": "object", "properties": {"name": _NAME, "prompt": {"type": "string"}},
                    "required": ["name", "prompt"]}},
    {"name": "list_agents", "spawn": "list_agents",
     "description": "The agents you created (in this run or earlier ones), latest versions.",
     "parameters": {"type": "object", "properties": {}}},
)


class SpawnError(Exception):
    """A spawn tool call that cannot be done: its message is the tool's result."""


def spawn_grants(definition: schema.TaskDefinition) -> list[schema.ToolGrant]:
    """The spawn tools a task call is offered: none unless it may still create agents."""
    spawn = definition.get("spawn")
    return list(GRANTS) if spawn is not None and spawn["depth"] < spawn["max_depth"] else []


def missing_tool(definition: schema.TaskDefinition, name: str) -> str:
    """What a model is told when it calls a tool it was not offered."""
    spawn = definition.get("spawn")
    if name in schema.SPAWN_TOOLS and spawn is not None:
        return (f"{name} is not available: agent {definition['role']} is at depth {spawn['depth']} and "
                f"max_spawn_depth = {spawn['max_depth']}, so it cannot create agents; do the work with "
                f"your own tools")
    return f"there is no tool named {name!r}"


def calls_answered(journal: list[dict]) -> int:
    """How many `call_agent` calls a journal has results for: a resumed call numbers its next
    one (`<node>/agent:<name>#<n>`) after them, as the uninterrupted call did."""
    return sum(1 for m in journal if m["role"] == "tool" and m.get("name") == "call_agent")


async def answer(call: TaskCall, tool: str, args: dict) -> Any:
    """The result of one spawn tool call of `call`: a value, or an `error: ...` text."""
    try:
        if tool == "create_agent":
            return await create_agent(call, args)
        if tool == "call_agent":
            return await call_agent(call, args)
        return [_listed(r) for r in await call.engine.ledger.latest_recipes(call.definition["role"])]
    except SpawnError as err:
        return f"error: {tool}: {err}"


async def create_agent(call: TaskCall, args: dict) -> dict:
    definition = call.definition
    name = _agent_name(args.get("name"))
    instructions = args.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        raise SpawnError("`instructions` must be a non-empty string: the agent's system prompt")
    tools = args.get("tools")
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise SpawnError("`tools` must be a list of tool names (it may be empty)")
    own = _own_tools(definition)
    refused = [t for t in tools if t not in own]
    if refused:
        raise SpawnError(f"agent {name} may not have {_listing(refused)}: an agent gets only tools its creator "
                         f"has, and yours are {_listing(sorted({g['name'] for g in own.values()})) or 'none'}")
    model = args.get("model")
    if model is not None:
        allowed = allowed_models(call.engine, definition)
        if model not in allowed:
            raise SpawnError(f"model {model!r} is not allowed; use one of {_listing(allowed)} "
                             f"(or leave `model` out for yours)")
    spawn = cast(schema.Spawn, definition.get("spawn"))
    recipe = AgentRecipe(definition["role"], name, instructions, tuple(dict.fromkeys(own[t]["name"] for t in tools)),
                         model, spawn["depth"] + 1)
    version = await call.engine.ledger.save_recipe(recipe, call.job.node_id)
    return {"agent": recipe.full_name, "version": version}


async def call_agent(call: TaskCall, args: dict) -> Any:
    number = call.agent_calls  # counted by the caller, whatever the arguments
    name = _agent_name(args.get("name"))
    prompt = args.get("prompt")
    if not isinstance(prompt, str):
        raise SpawnError("`prompt` must be a string")
    creator = call.definition["role"]
    recipes = {r.name: r for r in await call.engine.ledger.latest_recipes(creator)}
    recipe = recipes.get(name)
    if recipe is None:
        raise SpawnError(f"you have no agent named {name!r}; create it first with create_agent"
                         + (f" (yours: {_listing(sorted(recipes))})" if recipes else ""))
    target = f"{recipe.full_name}@v{recipe.version}"
    if target not in call.engine.task_entries:
        call.engine.add_task(target, agent_task(call.engine, recipe, call.definition, call.entry))
    node_id = f"{call.job.node_id}/agent:{name}#{number}"
    try:
        return await call.engine.call(node_id, "task", target, {"prompt": prompt}, recipe.full_name,
                                      nested=True, contained=True)
    except NodeFailure as failure:
        raise SpawnError(f"agent {recipe.full_name} failed: {failure.message}") from None


def agent_task(engine: Engine, recipe: AgentRecipe, creator: schema.TaskDefinition,
               creator_entry: schema.Task) -> schema.Task:
    """The task a created agent answers: one prompt, a text answer, the recipe's instructions as
    its system text, its tools from its creator's; decoding, retries and timeouts as its creator's."""
    own = _own_tools(creator)
    lost = [t for t in recipe.tools if t not in own]
    if lost:
        raise SpawnError(f"agent {recipe.full_name} has tools its creator no longer has ({_listing(lost)}); "
                         f"create it again with create_agent")
    model = engine.options.model or recipe.model or creator["model"]
    if recipe.model is not None and not engine.options.model and model not in allowed_models(engine, creator):
        raise SpawnError(f"agent {recipe.full_name} uses model {model!r}, which this workflow no longer uses; "
                         f"create it again with create_agent")
    spawn = cast(schema.Spawn, creator.get("spawn"))
    definition = cast(schema.TaskDefinition, {
        "kind": "task", "role": recipe.full_name, "task": "agent", "prompt": "{prompt}",
        "params": [{"name": "prompt", "type": "str", "has_default": False, "default": None}],
        "returns": "str", "output_schema": None, "model": model,
        "system": recipe.instructions.replace("{", "{{").replace("}", "}}"),  # the text as it is, no template
        "temperature": creator["temperature"], "max_tokens": creator["max_tokens"],
        "max_turns": creator["max_turns"], "memory": "none", "max_context_tokens": creator["max_context_tokens"],
        "tools": [own[t] for t in recipe.tools],
        "spawn": {"max_depth": spawn["max_depth"], "depth": recipe.depth}})
    endpoint = creator_entry if model == creator["model"] else _entry_of_model(engine, model) or creator_entry
    return cast(schema.Task, {
        "definition": definition, "definition_hash": definition_hash(definition),
        "retries": creator_entry["retries"], "timeout": creator_entry["timeout"],
        "api_base": endpoint["api_base"], "api_key_env": endpoint["api_key_env"],
        "cache": creator_entry["cache"], "replicas": 1})


def allowed_models(engine: Engine, creator: schema.TaskDefinition) -> list[str]:
    """The models a created agent may name: its creator's and every model a role of the
    workflow uses (only the `--model` one when it is given); never a person."""
    if engine.options.model:
        return [engine.options.model]
    models = {creator["model"], *(engine.task_definition(t)["model"] for t in engine.plan["tasks"])}
    return sorted(m for m in models if m and not is_human(m))


def _entry_of_model(engine: Engine, model: str) -> schema.Task | None:
    """A declared task that uses `model`: where to reach it (`api_base`, `api_key_env`)."""
    return next((engine.task_entries[t] for t in engine.plan["tasks"]
                 if engine.task_definition(t)["model"] == model), None)


def _own_tools(definition: schema.TaskDefinition) -> dict[str, schema.ToolGrant]:
    """A creator's grants by the names a recipe may use: the name its model sees, and the
    declared name (`tool`, `role.task`)."""
    own: dict[str, schema.ToolGrant] = {}
    for grant in definition["tools"]:
        own[grant["name"]] = grant
        declared = grant.get("tool") or grant.get("delegate")
        if declared:
            own[declared] = grant
    return own


def _agent_name(name: Any) -> str:
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise SpawnError(f"the agent name must be letters, digits and _ (not starting with a digit, at most "
                         f"64), got {name!r}")
    return name


def _listed(recipe: AgentRecipe) -> dict:
    return {"name": recipe.name, "version": recipe.version, "instructions": recipe.instructions,
            "tools": list(recipe.tools), "model": recipe.model}


def _listing(names) -> str:
    return ", ".join(names)
