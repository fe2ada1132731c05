"""One task call: the model/tool loop, journaled message by message.

Every message that joins the conversation (a model response, a tool result, a repair
request) is persisted before the loop goes on, so a call interrupted in its fifth turn
resumes at its fifth turn with nothing paid twice. The loop is a function of the
conversation so far: replaying the journal and continuing are the same code.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from agentflow.compiler import schema
from agentflow.compiler.types import TypeMismatch, type_from_json

from . import spawn
from .engine import Engine, NodeFailure, NodeJob, NodeOutcome
from .ledger import PROMPT_STEP, SESSION_STEP, TOOL_STARTED_STEP, estimated_tokens
from .models import ModelError, ModelRequest, ModelResponse
from .programs import programs_answered, run_program
from .tools import TemplateError, ToolError, check_arguments, render_template

SUMMARY_CHARS = 300
# The result a model gets for a non-idempotent tool call that a crash interrupted (`--resume`
# does not run it again: it may have acted).
INTERRUPTED_NOTE = ("error: this call of {name} was interrupted (the process running it stopped) and reported "
                    "no result. Its effect is unknown: it may or may not have happened. Check before calling "
                    "it again.")


class ToolInterrupted(Exception):
    """A non-idempotent tool call whose runner was lost while it ran (a Temporal worker that
    died): it is not run again, and is answered as one a crash interrupted locally."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"tool {tool} was interrupted")
        self.tool = tool


def compact(calls: list[list[dict]], budget: int) -> list[dict]:
    """A session transcript that fits `budget` tokens: whole older calls are folded into
    one summary message (a tool call never leaves its result), newest calls kept."""
    kept: list[list[dict]] = []
    used = 0
    for call in reversed(calls):
        size = estimated_tokens(call)
        if kept and used + size > budget:
            break
        kept.insert(0, call)
        used += size
    folded = calls[: len(calls) - len(kept)]
    if not folded:
        return [m for call in kept for m in call]
    lines = []
    for call in folded:
        asked = next((m.get("content") or "" for m in call if m["role"] == "user"), "")
        answered = next((m.get("content") or "" for m in reversed(call) if m["role"] == "assistant"), "")
        lines.append(f"- asked: {asked[:SUMMARY_CHARS]}\n  answered: {answered[:SUMMARY_CHARS]}")
    summary = {"role": "user", "content": "Summary of earlier turns in this session:\n" + "\n".join(lines)}
    return [summary, *(m for call in kept for m in call)]


def _assistant_message(response: ModelResponse) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": response.content}
    if response.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                 for c in response.tool_calls]
    return message


class TaskCall:
    def __init__(self, engine: Engine, job: NodeJob) -> None:
        self.engine = engine
        self.job = job
        self.definition = engine.task_definition(job.target)
        self.entry = engine.task_entries[job.target]
        self.role = self.definition["role"]
        self.returns = type_from_json(self.definition["returns"])
        self.attempts = 1
        self.usage: tuple[int, int, float] = (0, 0, 0.0)  # prompt tokens, completion tokens, cost in USD
        self.delegations = 0
        self.programs = 0  # programs run so far (`run_program`): the next is `<node>/program#<n+1>`
        self.agent_calls = 0  # `call_agent` calls, numbered like delegations
        self.grants = self.definition["tools"] + spawn.spawn_grants(self.definition)

    def fail(self, message: str) -> NodeFailure:
        return NodeFailure(self.job.node_id, self.role, message, self.attempts)

    def own_messages(self) -> list[dict]:
        """The call's system text (if any) and prompt, rendered from its arguments."""
        try:
            system = render_template(self.definition["system"] or "", self.job.args)
            prompt = render_template(self.definition["prompt"], self.job.args)
        except TemplateError as err:
            raise self.fail(f"prompt template: {err}") from None
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    async def initial_messages(self, own: list[dict]) -> list[dict]:
        """`own` with, for a role with memory (session or persistent), its conversation so far
        between system text and prompt."""
        if self.definition["memory"] == "none":
            return own
        calls = await self.engine.ledger.load_session(self.role)
        return own[:-1] + compact(calls, self.definition["max_context_tokens"]) + own[-1:]

    async def run(self) -> NodeOutcome:
        ledger = self.engine.ledger
        own = self.own_messages()
        start = await self.initial_messages(own)
        steps = await ledger.load_turns(self.job.node_id, self.job.key)
        if not steps:  # without the role's session (stored once, in its sessions)
            await ledger.append_turn(self.job.node_id, self.job.key, {"role": PROMPT_STEP, "messages": own})
        interrupted = interrupted_calls(steps)
        journal = [m for m in steps if m["role"] not in (SESSION_STEP, PROMPT_STEP, TOOL_STARTED_STEP)]
        # killed after its session step, before its result
        remembered = any(m["role"] == SESSION_STEP for m in steps)
        messages = start + journal
        max_turns = self.definition["max_turns"]
        retries = self.entry["retries"]
        turns = sum(1 for m in journal if m["role"] == "assistant")
        self.delegations = delegations_answered(journal, self.definition["tools"])
        self.programs = programs_answered(journal)
        self.agent_calls = spawn.calls_answered(journal)
        repairs = sum(1 for m in journal if m.get("repair"))
        while True:  # every pass adds a message or ends; model turns are bounded: no spinning
            pending = unanswered_tool_calls(messages)
            if pending:
                for call in pending:
                    if interrupted[call["id"]]:
                        interrupted[call["id"]] -= 1
                        await self.persist(messages, _tool_message(call, INTERRUPTED_NOTE.format(
                            name=call["function"]["name"])))
                        continue
                    await self.persist(messages, await self.tool_result(call))
                continue
            last = messages[-1]
            if last["role"] == "assistant" and not last.get("tool_calls"):
                value, error = self.parse_answer(last.get("content"))
                if error is None:
                    await self.remember(messages[len(start) - 1:], journaled=remembered)
                    return NodeOutcome(value, self.attempts, *self.usage)
                repairs += 1
                if repairs > retries:
                    raise self.fail(f"the answer did not match {self.returns} after {repairs} tries: {error}")
                await self.persist(messages, {"role": "user", "repair": True, "content":
                                              f"Your answer was not valid: {error}\nReply again with only "
                                              f"JSON that matches the schema."})
                continue
            if turns >= max_turns:
                raise self.fail(f"no final answer within max_turns = {max_turns} model turns; raise max_turns "
                                f"on the task or its role if it needs more tool rounds")
            turns += 1
            response = await self.complete(messages, turns)
            await self.persist(messages, _assistant_message(response))

    async def persist(self, messages: list[dict], message: dict) -> None:
        messages.append(message)
        await self.engine.ledger.append_turn(self.job.node_id, self.job.key, message)

    async def remember(self, conversation: list[dict], *, journaled: bool) -> None:
        """Adds the call's conversation to its role's session. It is journaled under the call's
        key as well, once (`journaled`: a call killed after that step, before its result was
        stored, resumes with it): a run that reuses this call adds the same messages to its
        own session (see Ledger.reused)."""
        if self.definition["memory"] != "none":
            clean = [{k: v for k, v in m.items() if k != "repair"} for m in conversation]
            if not journaled:
                await self.engine.ledger.append_turn(self.job.node_id, self.job.key,
                                                     {"role": SESSION_STEP, "messages": clean})
            await self.engine.ledger.append_session(self.role, clean)

    def parse_answer(self, content: str | None) -> tuple[Any, str | None]:
        if self.definition["output_schema"] is None:
            return content or "", None
        text = (content or "").strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        try:
            return self.engine.validators.validate_json(self.returns, text), None
        except TypeMismatch as err:
            return None, _validation_summary(err)

    async def complete(self, messages: list[dict], turn: int) -> ModelResponse:
        d = self.definition
        tools = tuple({"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                        "parameters": t["parameters"]}} for t in self.grants)
        request = ModelRequest(
            model=d["model"], messages=tuple({k: v for k, v in m.items() if k != "repair"} for m in messages),
            tools=tools, output_schema=d["output_schema"], output_name=_output_name(d["returns"]),
            node_id=self.job.node_id, task=self.job.target, turn=turn, attempt=self.attempts,
            temperature=d["temperature"], max_tokens=d["max_tokens"], timeout_s=self.entry["timeout"],
            api_base=self.entry["api_base"], api_key_env=self.entry["api_key_env"],
            script_dir=str(self.engine.options.spec_dir))
        try:
            response = await self.engine.executor.complete(self, request)
        except ModelError as err:
            raise self.fail(_naming_model(d["model"], str(err))) from None
        prompt, completion, cost = self.usage
        self.usage = (prompt + response.prompt_tokens, completion + response.completion_tokens,
                      cost + (response.cost_usd or 0.0))
        self.engine.ledger.record_llm_call(self.job.node_id, response)
        return response

    async def tool_result(self, call: dict) -> dict:
        name = call["function"]["name"]
        grant = next((t for t in self.grants if t["name"] == name), None)
        if grant is None:
            return _tool_message(call, f"error: {spawn.missing_tool(self.definition, name)}")
        if "delegate" in grant:  # numbered whatever its arguments, as `delegations_answered` counts
            self.delegations += 1
        if "program" in grant:  # likewise, as `programs_answered` counts
            self.programs += 1
        if grant.get("spawn") == "call_agent":  # likewise, as `spawn.calls_answered` counts
            self.agent_calls += 1
        try:
            args = json.loads(call["function"].get("arguments") or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as err:
            return _tool_message(call, f"error: the arguments are not valid JSON: {err}")
        if "program" in grant:
            source = args.get("source")
            if not isinstance(source, str):
                return _tool_message(call, "error: run_program takes one argument, `source`: the program's text")
            return _tool_message(call, await run_program(self, self.programs, source))
        if "spawn" in grant:
            return _tool_message(call, await spawn.answer(self, grant["spawn"], args))
        if "delegate" in grant:
            return _tool_message(call, await self.delegate(grant["delegate"], args))
        if not self.engine.plan["tools"][grant["tool"]].get("idempotent", True):
            await self.engine.ledger.tool_started(self.job.node_id, self.job.key, {
                "role": TOOL_STARTED_STEP, "tool_call_id": call["id"], "name": name})
        try:
            value = await run_tool(self.engine, grant["tool"], args)
        except ToolInterrupted:
            return _tool_message(call, INTERRUPTED_NOTE.format(name=name))
        except ToolError as err:
            return _tool_message(call, f"error: {err}")
        return _tool_message(call, value)

    async def delegate(self, target: str, args: dict) -> Any:
        """A delegated task's value; with `on_delegate_failure = "return"`, its failure too, as
        text for the model (otherwise the failure fails this call, and the run)."""
        contained = self.definition.get("on_delegate_failure") == "return"
        sub_id = f"{self.job.node_id}/{target}#{self.delegations}"
        try:
            return await self.engine.call(sub_id, "task", target, args, target.split(".")[0], nested=True,
                                          contained=contained)
        except NodeFailure as failure:
            if not contained:
                raise
            return f"error: the delegated task {target} failed: {failure.message}"


def unanswered_tool_calls(messages: list[dict]) -> list[dict]:
    """The tool calls of the latest model turn that have no result yet, in order.

    Only results after that turn count: ids repeat across turns and calls (the scripted
    model's `call_<turn>_<i>`, some providers'), and a resumed turn may have run some of its
    calls but not all; each one must be answered before the model is asked again."""
    for at in range(len(messages) - 1, -1, -1):
        if messages[at]["role"] == "assistant":
            answered = Counter(m.get("tool_call_id") for m in messages[at + 1:] if m["role"] == "tool")
            pending = []
            for call in messages[at].get("tool_calls") or ():
                if answered[call["id"]]:
                    answered[call["id"]] -= 1
                else:
                    pending.append(call)
            return pending
    return []


async def tool_node_started(engine: Engine, job: NodeJob) -> None:
    """Before a direct call of a non-idempotent tool runs, its start is journaled (and
    committed); one that a crash interrupted fails instead of running again: nobody knows
    whether it acted. That failure forgets the journal, so the next `--resume` runs it."""
    if engine.plan["tools"][job.target].get("idempotent", True):
        return
    if any(step["role"] == TOOL_STARTED_STEP for step in await engine.ledger.load_turns(job.node_id, job.key)):
        raise interrupted_tool_node(job)
    await engine.ledger.tool_started(job.node_id, job.key, {"role": TOOL_STARTED_STEP, "name": job.target})


def interrupted_tool_node(job: NodeJob) -> NodeFailure:
    """The failure of a direct call of a non-idempotent tool that was interrupted while it ran."""
    return NodeFailure(job.node_id, None, f"tool {job.target} was interrupted while it ran (the process running "
                                          f"it stopped); its effect is unknown. Check it, then `--resume` again "
                                          f"to run it again")


def interrupted_calls(steps: list[dict]) -> Counter:
    """Tool call ids of the journal's latest model turn whose start is journaled but not
    their result: non-idempotent calls that a crash interrupted (only the latest turn can
    have been running)."""
    for at in range(len(steps) - 1, -1, -1):
        if steps[at]["role"] == "assistant":
            later = steps[at + 1:]
            return (Counter(m["tool_call_id"] for m in later if m["role"] == TOOL_STARTED_STEP)
                    - Counter(m.get("tool_call_id") for m in later if m["role"] == "tool"))
    return Counter()


def delegations_answered(journal: list[dict], grants: list[schema.ToolGrant]) -> int:
    """How many delegated calls a journal has results for: a resumed call numbers its next
    delegation (`<node>/<role.task>#<n>`) after them, as the uninterrupted call did."""
    delegates = {t["name"] for t in grants if "delegate" in t}
    return sum(1 for m in journal if m["role"] == "tool" and m.get("name") in delegates)


def _naming_model(model: str, message: str) -> str:
    """`message` led by the model it concerns, once: the litellm client's messages already are."""
    prefix = f"model {model}"
    return message if message.startswith(prefix) else f"{prefix}: {message}"


def _output_name(returns: Any) -> str:
    return returns["record"] if isinstance(returns, dict) and "record" in returns else "Answer"


def _tool_message(call: dict, value: Any) -> dict:
    content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": content}


def _validation_summary(err) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "answer"
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts)


async def run_tool(engine: Engine, name: str, args: dict) -> Any:
    """One tool call with transient retries, its value checked against the declared type."""
    entry = engine.plan["tools"][name]
    args = check_arguments(name, entry["definition"]["params"], args, engine.validators)
    value = await engine.executor.call_tool(engine, name, args)
    try:
        return engine.validators.validate(type_from_json(entry["definition"]["returns"]), value)
    except TypeMismatch as err:
        raise ToolError(f"tool {name} returned a value that is not a {entry['definition']['returns']}: "
                        f"{_validation_summary(err)}", tool=name) from None
