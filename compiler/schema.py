"""The plan's schema: what `agentflow compile --emit plan` prints and the runtime reads.

A plan is plain JSON data, so it travels unchanged to a Temporal worker and its hash is the
hash of its canonical JSON. These TypedDicts type that data without changing it: lowering
builds it, the runtime reads it through them, and mypy checks both sides. This module
imports nothing of the compiler, so the runtime (and the Temporal sandbox) can load it
without the parser.

No `from __future__ import annotations` here: tests check plans against these classes at run
time, which needs `NotRequired` visible to `TypedDict`.
"""
from typing import Any, Literal, NotRequired, TypedDict, Union

from .ir import Expr

PLAN_FORMAT = "agentflow-plan/1"

TypeJson = Union[str, dict[str, Any]]  # a type's JSON spelling: "int", {"list": "str"}, {"record": "T"}
JsonSchema = dict[str, Any]


class Param(TypedDict):
    """A parameter of the entry choreography, a task or a tool."""

    name: str
    type: TypeJson
    has_default: bool
    default: Any  # the default's value (null when there is none)


# ---------------------------------------------------------------- declarations

class Role(TypedDict):
    """A role's attributes, program defaults applied; tasks copy what changes a result."""

    replicas: int
    memory: Literal["none", "session", "persistent"]
    max_turns: int
    retries: int
    max_context_tokens: int
    system: str
    tools: list[str]  # granted tools and `role.task` delegations
    model: NotRequired[str]
    temperature: NotRequired[float]
    max_tokens: NotRequired[int]
    timeout: NotRequired[float]
    api_base: NotRequired[str]
    api_key_env: NotRequired[str]
    agent: NotRequired[str]  # a persistent role's agent, when not the role's own name
    programs: NotRequired[bool]
    program_max_chars: NotRequired[int]
    program_max_nodes: NotRequired[int]
    spawn: NotRequired[bool]
    max_spawn_depth: NotRequired[int]
    on_delegate_failure: NotRequired[Literal["fail", "return"]]


RUN_PROGRAM = "run_program"  # the function tool of a role with `programs = true`
PROGRAM_MAX_CHARS = 20_000  # a program's source, unless the role says `program_max_chars`
PROGRAM_MAX_NODES = 1_000  # calls one program may start, unless the role says `program_max_nodes`


class ProgramLimits(TypedDict):
    max_chars: int
    max_nodes: int


class ToolGrant(TypedDict):
    """What a task's model is told about one granted tool: a `tool`, a `delegate` task, or
    `run_program` (with the role's `program` limits)."""

    name: str
    description: str
    parameters: JsonSchema
    tool: NotRequired[str]
    definition_hash: NotRequired[str]  # with `tool`
    delegate: NotRequired[str]  # "role.task"
    program: NotRequired[ProgramLimits]
    spawn: NotRequired[str]  # one of SPAWN_TOOLS: offered to a role with `spawn = true` at run time


# The function tools a role with `spawn = true` is offered (runtime/spawn.py answers them).
SPAWN_TOOLS = ("create_agent", "call_agent", "list_agents")
DEFAULT_MAX_SPAWN_DEPTH = 2


class Spawn(TypedDict):
    """Where a spawning role or created agent stands: created agents nest `depth` deep (0 for a
    declared role), up to `max_depth`."""

    max_depth: int
    depth: int


class TaskDefinition(TypedDict):
    """Everything that changes what a task returns: hashed into its definition hash."""

    kind: Literal["task"]
    role: str
    task: str
    prompt: str
    params: list[Param]
    returns: TypeJson
    output_schema: JsonSchema | None  # null for a task returning `str`
    model: str  # E301 holds for every role a run can reach; only unreachable ones have null
    system: str
    temperature: float | None
    max_tokens: int | None
    max_turns: int
    memory: Literal["none", "session", "persistent"]
    max_context_tokens: int
    tools: list[ToolGrant]
    spawn: NotRequired[Spawn]  # `spawn = true`: it may create agents (runtime/spawn.py)
    on_delegate_failure: NotRequired[Literal["return"]]  # a failed delegation is the tool's result


class Task(TypedDict):
    """A task: its definition, and the attributes that do not change its result."""

    definition: TaskDefinition
    definition_hash: str
    retries: int
    timeout: float | None
    api_base: str | None
    api_key_env: str | None
    cache: bool
    replicas: int


class ToolDefinition(TypedDict):
    """Everything that changes what a tool returns (its code version is added at run time)."""

    kind: Literal["tool"]
    tool: str
    impl: Literal["python", "command", "builtin"]
    target: str | list[str]  # "module:function", an argv, a builtin's name
    params: list[Param]
    returns: TypeJson
    cwd: str | None


class Tool(TypedDict):
    """A tool: its definition, and what models are told and the runtime needs."""

    definition: ToolDefinition
    definition_hash: str
    description: str
    parameters: JsonSchema
    timeout: float | None
    retries: int
    cache: bool
    idempotent: NotRequired[bool]  # false: not run again after a crash during it (default true)


# ---------------------------------------------------------------- bodies and nodes

class Binding(TypedDict):
    expr: Expr
    after: list[str]  # sibling bindings named in `after`
    line: int
    session_after: NotRequired[list[str]]  # earlier siblings calling the same session role


class Body(TypedDict):
    """A block: bindings by name, and the `return` or `yield` expression."""

    bindings: dict[str, Binding]
    result: Expr | None


class CallNode(TypedDict):
    """A task or tool call."""

    kind: Literal["task", "tool"]
    target: str  # "role.task" or a tool's name
    args: dict[str, Expr]  # by parameter name, defaults filled in
    line: int
    scope: str | None  # the enclosing body's template prefix; null at the top level
    definition_hash: str
    role: NotRequired[str]  # a task's role


class ChoreographyNode(TypedDict):
    """A sub-choreography call: its body inlined under the call's id."""

    kind: Literal["choreography"]
    target: str
    args: dict[str, Expr]
    line: int
    scope: str | None
    body: Body


class ForNode(TypedDict):
    kind: Literal["for"]
    var: str
    iter: Expr
    body: Body  # instance ids `<node>[i]/...`
    line: int
    scope: str | None
    sequential: NotRequired[bool]  # items one at a time: the body calls a session role


class RepeatNode(TypedDict):
    kind: Literal["repeat"]
    max: int
    until: Expr  # evaluated in each iteration's body
    body: Body  # instance ids `<node>#n/...`
    line: int
    scope: str | None


StructureNode = Union[ChoreographyNode, ForNode, RepeatNode]  # a node with a body
Node = Union[CallNode, StructureNode]


class Plan(TypedDict):
    """A compiled program, from one entry choreography."""

    format: str  # PLAN_FORMAT
    source: str  # the file's name, without its directory
    flow: str  # the file's stem
    entry: str
    params: list[Param]
    returns: TypeJson | None
    types: dict[str, JsonSchema]  # each record type's JSON schema
    type_table: dict[str, list[list[Any]]]  # record type -> [[field, TypeJson]]
    roles: dict[str, Role]
    tasks: dict[str, Task]  # by "role.task"
    tools: dict[str, Tool]
    body: Body  # the entry's
    nodes: dict[str, Node]  # by template id


class CompiledProgram(TypedDict):
    """A program a model wrote that passed every check (compiler/programs.py): its body and
    node templates (ids under `prefix`, `<call template>/program#*`) for the engine to run."""

    prefix: str
    body: Body
    nodes: dict[str, Node]
    max_nodes: int  # calls it may start


def conversation(role: str, attrs: Any) -> str | None:
    """The conversation a role's calls continue, given its attribute values: its own session,
    a persistent agent's (shared by every role naming that agent), or none. Calls continuing
    one conversation run one at a time in program order (E401 and the engine know it)."""
    memory = attrs.get("memory")
    if memory == "session":
        return role
    if memory == "persistent":
        return "agent " + str(attrs.get("agent") or role)  # a space: no role name clashes with it
    return None


def conversations(plan: Plan) -> dict[str, str]:
    """role -> the conversation its calls continue, for the roles that have one."""
    return {name: conv for name, role in plan["roles"].items() if (conv := conversation(name, role)) is not None}


def session_roles(plan: Plan) -> set[str]:
    """The roles whose calls continue a conversation (`memory = "session"` or `"persistent"`):
    the engine serialises their calls and the ledgers rebuild their sessions in program order."""
    return set(conversations(plan))


def persistent_agents(plan: Plan) -> dict[str, str]:
    """role -> the persistent agent (`memory = "persistent"`) whose conversation it continues."""
    return {name: role.get("agent") or name for name, role in plan["roles"].items() if role["memory"] == "persistent"}
