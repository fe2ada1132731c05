"""The dataflow scheduler: interprets a plan, starting each node as soon as its
inputs are ready, within each role's `replicas` and the global concurrency.

Bindings of a scope start together and wait on each other's futures, so data alone
decides order. `for` bodies expand per item, `repeat` bodies per iteration, and a
conditional evaluates only its chosen side. Where a call runs is the `NodeExecutor`'s
business (in-process here, a Temporal activity elsewhere); whether it runs at all is
decided here, from keys: a node whose key has a stored result is reused.
"""
from __future__ import annotations

import asyncio
import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from agentflow.compiler import schema
from agentflow.compiler.hashing import canonical_json, definition_hash, digest, value_hash
from agentflow.compiler.names import template_id
from agentflow.compiler.ir import Expr
from agentflow.compiler.types import Type, Validators, type_from_json, with_omitted_fields

from .evaluate import ExpressionError, evaluate, field_of
from .human import is_human
from .inputs import force_matcher
from .ports import NodeExecutor, Reporter, RunLedger

if TYPE_CHECKING:  # tools loads only once a run calls one
    from .tools import ToolContext

# Where an id is cut into the ids it nests in: before each `[`, `#` and `/`, but the `/`
# after a `for` item (`[2]/`), whose loop is cut at its `[` already.
_CUT = re.compile(r"[\[#]|(?<!\])/")


def enclosing(instance_id: str) -> list[str]:
    """The ids a node id nests in that can be structures: `main/r[2]/a#1/x` -> `main`,
    `main/r`, `main/r[2]/a`, `main/r[2]/a#1` (a repeat's iteration, or a program). A `for`
    item (`main/r[2]`) is left out: it is no structure, and a fan-out of 100k items would
    keep 100k of them in `Engine.ran_inside`."""
    return [instance_id[:m.start()] for m in _CUT.finditer(instance_id)]


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    spec_dir: Path
    workspace: Path
    concurrency: int = 16
    model: str | None = None
    force: tuple[str, ...] = ()
    no_cache: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class NodeJob:
    """One call to execute: JSON-serialisable, so it can travel to a remote worker."""

    node_id: str
    kind: str  # "task" | "tool"
    target: str  # "role.task" | tool name
    args: dict
    key: str


@dataclass(frozen=True)
class NodeOutcome:
    value: Any
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class NodeFailure(Exception):
    """A node failed after its retries; `show` names the node, its role and this message."""

    def __init__(self, node_id: str, role: str | None, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.node_id, self.role, self.message, self.attempts = node_id, role, message, attempts


class NodeWaiting(Exception):
    """A node waits for a person's answer (`model = "human"`): what depends on it waits too,
    everything else goes on, and the run ends `waiting`. `question` is what the person reads."""

    def __init__(self, question: dict) -> None:
        super().__init__(question["node"])
        self.question = question


class RunAborted(Exception):
    """A node did not start because another node failed first."""


@dataclass
class Scope:
    """One instance of a block: its id prefix, its names, and its enclosing scope."""

    prefix: str  # instance prefix, e.g. "main/reviews[2]"
    template: str  # template prefix, e.g. "main/reviews[*]"
    consts: dict[str, Any]
    parent: "Scope | None" = None
    futures: dict[str, asyncio.Future] = field(default_factory=dict)

    def instance_id(self, template_node_id: str) -> str:
        return self.prefix + template_node_id[len(self.template):]


@dataclass
class Decision:
    """Whether a node is reused or run, and why (what `--dry-run` prints)."""

    node_id: str
    action: str  # "reuse" | "run"
    reason: str


class Engine:
    def __init__(self, plan: schema.Plan, ledger: RunLedger, options: RunOptions, executor: NodeExecutor,
                 reporter: Reporter) -> None:
        self.plan = plan
        self.nodes: dict[str, schema.Node] = plan["nodes"]
        self._scope_nodes = by_scope(self.nodes, plan["entry"])
        self.ledger: RunLedger = ledger
        self.options = options
        self.executor: NodeExecutor = executor
        self.reporter: Reporter = reporter
        self.validators = Validators.from_plan_table(plan["type_table"])
        self.global_slots = asyncio.Semaphore(max(1, options.concurrency))
        self.role_slots = {name: asyncio.Semaphore(max(1, role["replicas"])) for name, role in plan["roles"].items()}
        locks: dict[str, asyncio.Lock] = {}  # one per conversation: roles naming one agent share it
        self.session_locks = {role: locks.setdefault(conv, asyncio.Lock())
                              for role, conv in schema.conversations(plan).items()}
        self.failure: NodeFailure | None = None
        self.failed_nodes: list[str] = []  # every node that failed, the first one first
        self.questions: list[dict] = []  # the nodes waiting for a person, as their questions
        self.ran_inside: set[str] = set()  # instance prefixes inside which a call ran (not reused)
        self.started: set[str] = set()
        self.decisions: list[Decision] = []
        self.tasks: set[asyncio.Task] = set()
        # the plan's tasks, and the agents created at run time as they are called (`add_task`)
        self.task_entries: dict[str, schema.Task] = dict(plan["tasks"])
        self._task_defs = {name: self._effective(entry) for name, entry in plan["tasks"].items()}
        self._code_versions: dict[str, str] = {}
        # Per-target parts of a key and tool objects, computed once (not once per node).
        self._key_parts: dict[tuple[str, str], tuple[str, str]] = {}
        self._param_types: dict[tuple[str, str], tuple[tuple[schema.Param, Type], ...]] = {}
        self._tool_specs: dict[str, Any] = {}
        self._tool_context: ToolContext | None = None
        self.calls_left: int | None = None  # in a program's engine: the calls it may still start
        self._breathe_at = 0.0  # see `breathe`

    def nested(self, nodes: dict[str, schema.Node], top: str, max_calls: int) -> "Engine":
        """This run's engine over other node templates (a program's, its top level `top`): the
        same ledger, executor, role slots and records, and a failure of its own, which its
        caller handles (it does not fail the run). Its calls run within its caller's global
        slot, at most `--concurrency` at once: taking the run's slots could starve itself."""
        view = copy.copy(self)
        view.nodes, view._scope_nodes = nodes, by_scope(nodes, top)
        view.failure, view.failed_nodes, view.calls_left = None, [], max_calls
        view.global_slots = asyncio.Semaphore(max(1, self.options.concurrency))
        return view

    # ------------------------------------------------------------ definitions and keys

    def _effective(self, entry: schema.Task) -> tuple[schema.TaskDefinition, str]:
        """A task's definition after `--model`, and its hash."""
        definition = entry["definition"]
        if self.options.model and not is_human(definition["model"]):  # a person is no model to swap
            definition = definition | {"model": self.options.model}
        return definition, definition_hash(definition)

    def task_definition(self, target: str) -> schema.TaskDefinition:
        return self._task_defs[target][0]

    def add_task(self, target: str, entry: schema.Task) -> None:
        """A task the plan does not declare (an agent created at run time), called as `target`.
        Its definition is final: `--model` was applied when its model was chosen."""
        self.task_entries[target] = entry
        self._task_defs[target] = (entry["definition"], entry["definition_hash"])

    def code_version(self, tool_name: str) -> str:
        version = self._code_versions.get(tool_name)
        if version is None:
            from .tools import tool_code_version
            version = self._code_versions[tool_name] = tool_code_version(self.tool_spec(tool_name), self.tool_context())
        return version

    def tool_spec(self, name: str):
        spec = self._tool_specs.get(name)
        if spec is None:
            spec = self._tool_specs[name] = self._make_tool_spec(name)
        return spec

    def _make_tool_spec(self, name: str):
        from .tools import ToolSpec
        d = self.plan["tools"][name]
        defn = d["definition"]
        target = tuple(defn["target"]) if isinstance(defn["target"], list) else defn["target"]
        return ToolSpec(name=name, params=tuple(p["name"] for p in defn["params"]), kind=defn["impl"],
                        target=target, returns_str=defn["returns"] == "str", timeout_s=d["timeout"],
                        cwd=defn["cwd"])

    def tool_context(self):
        if self._tool_context is None:
            from .tools import ToolContext
            self._tool_context = ToolContext(spec_dir=self.options.spec_dir, workspace=self.options.workspace)
        return self._tool_context

    def node_key(self, kind: str, target: str, args: dict, extra: str = "") -> tuple[str, str, dict]:
        """(key, definition hash, input hashes): everything that can change the result."""
        parts = self._key_parts.get((kind, target))
        if parts is None:  # code versions are fixed for the run (cached by code_version)
            if kind == "task":
                definition, def_hash = self._task_defs[target]
                versions = [self.code_version(t["tool"]) for t in definition["tools"] if "tool" in t]
            else:
                def_hash = self.plan["tools"][target]["definition_hash"]
                versions = [self.code_version(target)]
            parts = self._key_parts[(kind, target)] = (def_hash, canonical_json(versions))
        def_hash, versions_json = parts
        inputs = {name: value_hash(value) for name, value in args.items()}
        key = digest("node", def_hash, versions_json, canonical_json(inputs), extra)
        return key, def_hash, inputs

    # ------------------------------------------------------------ running a plan

    async def run(self, inputs: dict) -> Any:
        return await self.settled(self._entry(inputs))

    async def _entry(self, inputs: dict) -> Any:
        value = await self.block(self.plan["body"], Scope(self.plan["entry"], self.plan["entry"], dict(inputs)))
        return value if self.plan["returns"] is None else self.as_type(self.plan["returns"], value)

    async def settled(self, work) -> Any:
        """`await work` (a whole plan, or part of one): once it ends, however it ends, no node
        of it is left running, and a node aborted by a failure raises that failure."""
        try:
            return await work
        except RunAborted as aborted:  # what the result waited on never started: the first failure is why
            raise self.failure or aborted
        except asyncio.CancelledError:
            for task in list(self.tasks):  # interrupted: stop everything, state stays resumable
                task.cancel()
            raise
        finally:
            while self.tasks:  # running nodes finish and are stored, whatever happened
                await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def block(self, body: schema.Body, scope: Scope) -> Any:
        """Starts every binding of a block, then evaluates its result."""
        bindings = body["bindings"]
        for name, binding in bindings.items():
            scope.futures[name] = self.spawn(self.binding(name, binding, scope))
        waiting = False
        try:
            result = None if body["result"] is None else await self.eval(body["result"], scope)
            futures = scope.futures.values()
            if all(f.done() for f in futures):  # the usual case: no gather to build
                for f in futures:
                    f.result()
            else:
                await asyncio.gather(*futures)
        except BaseException as err:
            await asyncio.gather(*scope.futures.values(), return_exceptions=True)
            waiting = isinstance(err, NodeWaiting)  # nodes after a person's answer are not skipped
            raise
        finally:
            if not waiting:
                self.mark_unstarted(scope)
        return result

    async def binding(self, name: str, binding: schema.Binding, scope: Scope) -> Any:
        for other in binding["after"] + binding.get("session_after", []):
            await self.lookup(other, scope)
        try:
            return await self.eval(binding["expr"], scope)
        except ExpressionError as err:
            raise self.fail(NodeFailure(f"{scope.prefix}/{name}", None, str(err)))

    def fail(self, failure: NodeFailure) -> NodeFailure:
        if self.failure is None:
            self.failure = failure
        self.failed_nodes.append(failure.node_id)
        return failure

    def mark_unstarted(self, scope: Scope) -> None:
        """Nodes of a finished scope that never started: the unchosen side of a conditional."""
        if self.failure is not None:
            return
        for tid, node in self._scope_nodes.get(scope.template, ()):
            iid = scope.instance_id(tid)
            if iid not in self.started:
                self.started.add(iid)
                role = node.get("role")  # only a call has one
                self.ledger.node_skipped(iid, role if isinstance(role, str) else None)
                self.reporter.node(iid, "skipped")

    async def lookup(self, name: str, scope: Scope) -> Any:
        s: Scope | None = scope
        while s is not None:
            if name in s.consts:
                return s.consts[name]
            if name in s.futures:
                return await s.futures[name]
            s = s.parent
        raise ExpressionError(f"`{name}` is not bound")

    async def eval(self, expr: Expr, scope: Scope) -> Any:
        op = expr[0]
        if op == "node":  # the shapes of most bindings and arguments, without the interpreter
            return await self.node(expr[1], scope)
        if op == "name":
            return await self.lookup(expr[1], scope)
        if op == "attr":  # `s.count`: how a step reads the one before it
            return field_of(await self.eval(expr[1], scope), expr[2])
        if op == "lit":
            return expr[1]
        return await evaluate(expr, lambda ref: self.eval(ref, scope))  # refs are nodes and names

    async def node(self, tid: str, scope: Scope) -> Any:
        node = self.nodes[tid]
        iid = scope.instance_id(tid)
        self.started.add(iid)
        kind = node["kind"]
        if node["kind"] != "task" and node["kind"] != "tool":
            return await self.structure(iid, tid, node, scope)
        args = {name: await self.eval(e, scope) for name, e in node["args"].items()}
        return await self.call(iid, kind, node["target"], args, node.get("role"))

    # ------------------------------------------------------------ structure

    async def structure(self, iid: str, tid: str, node: schema.StructureNode, scope: Scope) -> Any:
        """A `for`, `repeat` or sub-choreography instance. It ends with a final status like
        any node: failed when a node inside it failed (or its own expression did), cancelled
        when it was stopped, and reused when no call inside it ran (a `for` over an empty
        list reused nothing)."""
        self.ledger.structure_started(iid)
        kind = node["kind"]
        try:
            if node["kind"] == "for":
                value = await self.for_node(iid, node, scope)
            elif node["kind"] == "repeat":
                value = await self.repeat_node(iid, node, scope)
            else:
                args = {name: await self.eval(e, scope) for name, e in node["args"].items()}
                value = await self.choreography_node(iid, tid, node, args, scope)
        except BaseException as err:
            stopped = isinstance(err, (asyncio.CancelledError, RunAborted, NodeFailure, DryRunStop, NodeWaiting))
            status = "cancelled" if stopped and not self.failed_inside(iid) else "failed"
            if status == "cancelled" and isinstance(err, NodeWaiting):
                status = "waiting"
            self.ledger.structure_done(iid, status)
            self.reporter.node(iid, status, detail="a node inside it failed" if status == "failed" else "")
            raise
        cached = iid not in self.ran_inside and not (kind == "for" and value == [])  # nothing to reuse
        self.ledger.structure_done(iid, "succeeded", cached)
        self.reporter.node(iid, "succeeded", cached=cached)
        return value

    def failed_inside(self, iid: str) -> bool:
        """Whether a node that failed is this structure instance or lies inside it."""
        inner = (iid + "/", iid + "[", iid + "#")
        return any(failed == iid or failed.startswith(inner) for failed in self.failed_nodes)

    async def for_node(self, iid: str, node: schema.ForNode, scope: Scope) -> Any:
        items = await self.eval(node["iter"], scope)
        if not isinstance(items, list):
            raise self.fail(NodeFailure(iid, None, f"`for` needs a list, got {type(items).__name__}"))
        self.reporter.node(iid, "running", detail=f"{len(items)} items")
        return await self.for_items(iid, node, scope, items)

    async def for_items(self, iid: str, node: schema.ForNode, scope: Scope, items: list, start: int = 0) -> list:
        """The values of a `for`'s body over `items`, the first of them item number `start`."""
        template = template_id(iid) + "[*]"
        var, body = node["var"], node["body"]
        unknown: list[DryRunStop] = []

        async def item(i: int) -> Any:
            try:
                return await self.block(body, Scope(f"{iid}[{start + i}]", template, {var: items[i]}, scope))
            except DryRunStop as stop:  # --dry-run decides every item, not only those before it
                unknown.append(stop)

        values = await fan_out(len(items), item, 1 if node.get("sequential") else FAN_OUT_WINDOW, self.breathe)
        if unknown:
            raise unknown[0]
        return values

    async def repeat_node(self, iid: str, node: schema.RepeatNode, scope: Scope) -> Any:
        prev = None
        converged = False
        record: dict = {}
        template = template_id(iid) + "#*"
        iteration = 0
        for iteration in range(1, node["max"] + 1):
            body = Scope(f"{iid}#{iteration}", template, {"prev": prev}, scope)
            await self.block(node["body"], body)
            record = {name: body.futures[name].result() for name in node["body"]["bindings"]}
            if await self.eval(node["until"], body):
                converged = True
                break
            prev = record
        return {**record, "iterations": iteration, "converged": converged}

    async def choreography_node(self, iid: str, tid: str, node: schema.ChoreographyNode, args: dict,
                                scope: Scope) -> Any:
        consts = {name: value for name, value in args.items()}
        return await self.block(node["body"], Scope(iid, tid, consts, None))

    # ------------------------------------------------------------ calls

    def with_defaults(self, kind: str, target: str, args: dict) -> dict:
        """A null passed to a parameter that has a default gives the default; a record
        lacking optional fields of the parameter's type gets them as null."""
        given = {}
        for p, param_type in self._params(kind, target):
            value = args.get(p["name"])
            if value is None and p["has_default"]:
                value = p["default"]
            given[p["name"]] = with_omitted_fields(param_type, value, self.validators.table)
        return given

    def _params(self, kind: str, target: str) -> tuple[tuple[schema.Param, Type], ...]:
        """A call target's parameters with their parsed types, parsed once per run (not per call)."""
        params = self._param_types.get((kind, target))
        if params is None:
            table = self.task_entries if kind == "task" else self.plan["tools"]
            params = self._param_types[(kind, target)] = tuple(
                (p, type_from_json(p["type"])) for p in table[target]["definition"]["params"])
        return params

    def as_type(self, type_json: Any, value: Any) -> Any:
        """`value` with the omitted optional fields of the type spelled `type_json` (plan JSON)."""
        return with_omitted_fields(type_from_json(type_json), value, self.validators.table)

    def forced(self, node_id: str) -> bool:
        patterns = self.options.force
        return bool(patterns) and force_matcher(patterns)(node_id)

    def cacheable(self, kind: str, target: str) -> bool:
        table = self.task_entries if kind == "task" else self.plan["tools"]
        return table[target]["cache"] and not self.options.no_cache

    async def call(self, iid: str, kind: str, target: str, args: dict, role: str | None, nested: bool = False,
                   contained: bool = False) -> Any:
        """Runs or reuses one task or tool call, and stores its result before returning it.

        A `nested` call (delegation) runs inside its caller's global slot, so a
        delegation chain can never starve itself of slots. A `contained` call's failure is
        its caller's to handle (it goes back to the caller's model): it fails no run."""
        if self.calls_left is not None:
            if self.calls_left == 0:
                raise self.fail(NodeFailure(iid, role, "the program started more calls than its role allows "
                                                       "(`program_max_nodes`); write one that calls less"))
            self.calls_left -= 1
        args = self.with_defaults(kind, target, args)
        session_lock = self.session_locks.get(role) if role else None
        if role and session_lock is not None:
            async with session_lock:
                transcript = await self.ledger.session_hash(role)
                return await self._call(iid, kind, target, args, role, transcript, nested, contained)
        return await self._call(iid, kind, target, args, role, "", nested, contained)

    async def breathe(self) -> None:
        """Let the event loop run, if it last did over BREATHE_S ago: `fan_out` calls it between
        items. Items whose calls never suspend (a trivial async tool, a result reused from
        memory) would otherwise keep the loop for a whole fan-out, and a cancelled run (Ctrl-C)
        went on to the last of 100k items, as a cancellation reaches a task where it waits."""
        now = time.monotonic()
        if now >= self._breathe_at:
            self._breathe_at = now + BREATHE_S
            await asyncio.sleep(0)

    async def _call(self, iid, kind, target, args, role, extra, nested, contained) -> Any:
        key, def_hash, inputs = self.node_key(kind, target, args, extra)
        decision = await self.decide(iid, kind, target, key, def_hash, inputs)
        if self.options.dry_run:  # what --dry-run prints; a real run keeps no list of them
            self.decisions.append(decision)
        if decision.action == "reuse":
            value = await self.ledger.reused(iid, role, key, def_hash, inputs)
            self.reporter.node(iid, "succeeded", cached=True)
            return value
        if self.options.dry_run:
            if kind == "task":  # a call that resumes decides the programs it had begun as well
                from .programs import explain_programs
                await explain_programs(self, NodeJob(iid, kind, target, args, key))
            raise DryRunStop(iid)
        role_slot = self.role_slots.get(role) if role else None  # a created agent has none
        slots = ([] if nested else [self.global_slots]) + ([role_slot] if role_slot is not None else [])
        if self.is_human(kind, target):  # a person's answer takes no slot: waiting is not work
            slots = []
        for slot in slots:
            await slot.acquire()
        try:
            if self.failure is not None:
                raise RunAborted(iid)
            self.ledger.node_started(iid, role, key, def_hash, inputs)
            self.ran_inside.update(enclosing(iid))
            self.reporter.node(iid, "running")
            try:
                outcome = await self.executor.execute(self, NodeJob(iid, kind, target, args, key))
                self.ledger.node_succeeded(iid, role, key, outcome)
            except NodeFailure as failure:
                await self.ledger.node_failed(iid, role, failure.message, failure.attempts)
                self.reporter.node(iid, "failed", detail=failure.message)
                raise failure if contained else self.fail(failure)
            except NodeWaiting as waiting:
                await self.note_waiting(iid, role, key, waiting.question)
                raise
            except asyncio.CancelledError:
                self.ledger.node_cancelled(iid, role)
                raise
        finally:
            for slot in slots:
                slot.release()
        # The slot is free while the result commits: waiting for durability is not work.
        await self.ledger.flush()
        self.reporter.node(iid, "succeeded")
        return outcome.value

    def is_human(self, kind: str, target: str) -> bool:
        """Whether a call is answered by a person (`model = "human"`)."""
        return kind == "task" and is_human(self.task_definition(target)["model"])

    async def note_waiting(self, iid: str, role: str | None, key: str, question: dict) -> None:
        """A node waits for a person: its question is journaled and listed in the outcome. A
        call that delegated to it waits as well, with no question of its own: it resumes from
        its journal once the delegation is answered."""
        own = question["node"] == iid
        await self.ledger.node_waiting(iid, role, key, question if own else None)
        if own:
            self.questions.append(question)
        self.reporter.node(iid, "waiting", detail="a person answers it" if own else f"for {question['node']}")

    async def decide(self, iid, kind, target, key, def_hash, inputs) -> Decision:
        if self.forced(iid):
            return Decision(iid, "run", "forced")
        resumed = self.ledger.resumed_key(iid)
        if resumed == key:
            return Decision(iid, "reuse", "finished in the resumed run")
        if self.cacheable(kind, target) and await self.ledger.has_result(key):
            return Decision(iid, "reuse", "stored result with the same key")
        if not self.options.dry_run:  # the cause costs a query: only --dry-run asks for it
            return Decision(iid, "run", "no stored result")
        return Decision(iid, "run", await self.ledger.explain(iid, def_hash, inputs,
                                                               cacheable=self.cacheable(kind, target)))


def by_scope(nodes: dict[str, schema.Node], top: str) -> dict[str, list[tuple[str, schema.Node]]]:
    """Scope template -> its node templates (the top level's under `top`)."""
    scopes: dict[str, list[tuple[str, schema.Node]]] = {}
    for tid, node in nodes.items():
        scopes.setdefault(node.get("scope") or top, []).append((tid, node))
    return scopes


BREATHE_S = 0.01  # a fan-out lets the event loop in at least this often (`Engine.breathe`)

# Items of one `for` in flight at once. Far above any useful concurrency (calls beyond it
# wait for a slot anyway, and reused items' lookups are batched per loop turn), yet it
# bounds the memory of a fan-out of 100k items to a few thousand live bodies.
FAN_OUT_WINDOW = 2048


async def fan_out(count: int, item, window: int, breathe: Callable[[], Awaitable[None]] | None = None) -> list:
    """`[await item(i) for i in range(count)]`, with up to `window` items running at once, and
    `await breathe()` between two items of a lane (see `Engine.breathe`).

    Lanes pull the next index from one shared iterator, so items start in index order and
    the schedule is deterministic (a Temporal workflow replays it). After a failure no new
    item starts; the running ones finish (and are stored) before the first failure is raised."""
    values: list = [None] * count
    indices = iter(range(count))
    failures: list[BaseException] = []
    waits: list[NodeWaiting] = []  # items waiting for a person: later items still start

    async def lane() -> None:
        for i in indices:
            if failures:
                return
            try:
                values[i] = await item(i)
                if breathe is not None:
                    await breathe()
            except NodeWaiting as waiting:
                waits.append(waiting)
            except Exception as err:
                failures.append(err)
                return

    await asyncio.gather(*(lane() for _ in range(min(window, count))))
    if failures or waits:
        raise (failures or waits)[0]
    return values


class DryRunStop(Exception):
    """In --dry-run, a node that would run: its value, and what depends on it, is unknown."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id
