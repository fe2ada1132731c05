"""People in the loop: a role with `model = "human"` is answered by a person.

A human task's call becomes a question (its rendered prompt and output type, journaled
under the node's key); how the answer comes is the executor's business: asked on the
terminal (`run --interactive`), given later with `agentflow answer` (the run ends
`waiting`), or signalled to a Temporal workflow. This module imports nothing heavy: the
engine asks `is_human` of every task it runs.
"""
from __future__ import annotations

import asyncio
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, TextIO

from agentflow.compiler import schema
from agentflow.compiler.errors import AgentflowError

if TYPE_CHECKING:
    from .engine import Engine, NodeJob

HUMAN = "human"
QUESTION, ANSWER = "question", "answer"  # the journal steps of a node a person answers


def is_human(model: str | None) -> bool:
    return model == HUMAN


def question_for(plan: schema.Plan, definition: schema.TaskDefinition, node_id: str, key: str, args: dict) -> dict:
    """What the person reads and what `agentflow answer` validates against (JSON, journaled).
    Raises TemplateError for a prompt that cannot be rendered."""
    from agentflow.compiler.types import type_from_json

    from .tools import render_template
    return {"role": QUESTION, "node": node_id, "key": key, "task": f"{definition['role']}.{definition['task']}",
            "prompt": render_template(definition["prompt"], args), "returns": definition["returns"],
            "type": str(type_from_json(definition["returns"])), "types": plan["type_table"]}


def job_question(engine: "Engine", job: "NodeJob") -> dict:
    """The question of a human task's call, or its NodeFailure when the prompt cannot be rendered."""
    from .engine import NodeFailure
    from .tools import TemplateError
    definition = engine.task_definition(job.target)
    try:
        return question_for(engine.plan, definition, job.node_id, job.key, job.args)
    except TemplateError as err:
        raise NodeFailure(job.node_id, definition["role"], f"prompt template: {err}") from None


def answer_step(value: Any, by: str) -> dict:
    """The journal step of an answer: the value and who gave it (its row says when)."""
    return {"role": ANSWER, "value": value, "by": by}


def current_user() -> str:
    """Who answers when nobody says (`--by`): the login name."""
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without passwd entry)
        return "unknown"


def answer_command(run_id: str, question: dict, options: str = "") -> str:
    """The command line that answers a waiting node, with an example value of its type
    (`options`: e.g. the run's ` --db PATH`)."""
    import shlex
    return (f"agentflow answer {run_id} {shlex.quote(question['node'])} "
            f"{shlex.quote(example_value(question))}{options}")


def example_value(question: dict) -> str:
    """A placeholder answer that shows the expected shape (the person replaces it)."""
    import json
    returns = question["returns"]
    if returns == "str":
        return "YOUR ANSWER"
    if isinstance(returns, dict) and "literal" in returns:
        return str(returns["literal"][0])
    return json.dumps(skeleton(returns, question["types"]), ensure_ascii=False)


_BLANKS: dict[str, Any] = {"str": "", "int": 0, "float": 0.0, "bool": True}


def skeleton(type_json: Any, types: dict, depth: int = 0) -> Any:
    """A value of the type spelled `type_json` (plan JSON) with every field present: the shape
    of an answer, to fill in. Lists are empty, optional values null, literal unions their first
    member; records nest up to a few levels."""
    if isinstance(type_json, str):
        return _BLANKS.get(type_json)
    (kind, inner), = type_json.items()
    if kind == "list":
        return []
    if kind == "literal":
        return inner[0]
    if kind in ("record", "struct") and depth < 4:
        fields = types.get(inner, []) if kind == "record" else inner
        return {name: skeleton(field, types, depth + 1) for name, field in fields}
    return None  # optional, or records nested deeper


def describe(run_id: str | None, question: dict, options: str = "") -> str:
    """A waiting node for the terminal: its id, its prompt, the expected type and how to answer."""
    prompt = "\n".join("    " + line for line in question["prompt"].splitlines())
    lines = [f"waiting  {question['node']}  (a person answers {question['task']}, type {question['type']})",
             prompt]
    if run_id is not None:
        lines.append(f"  answer: {answer_command(run_id, question, options)}")
    return "\n".join(lines)


class TerminalAsker:
    """`run --interactive`: each question is shown on the terminal and read from it, one at a
    time, asked again until the answer fits. At end of input (EOFError) the node waits instead."""

    def __init__(self, check: Callable[[str, dict], Any], stdin: TextIO = sys.stdin,
                 out: TextIO = sys.stderr) -> None:
        self.check = check  # (typed text, question) -> the valid value, or raises with the reason
        self.stdin, self.out = stdin, out
        self.lock = asyncio.Lock()

    async def __call__(self, question: dict) -> Any:
        """The answer's value; EOFError at end of input (the caller makes the node wait)."""
        async with self.lock:
            self.out.write("\n" + describe(None, question) + "\n")
            while True:
                self.out.write("answer> ")
                self.out.flush()
                line = await self._read_line()
                if not line:
                    raise EOFError
                try:
                    return self.check(line.rstrip("\n"), question)
                except AgentflowError as err:  # the reason, then ask again
                    self.out.write(f"not a valid answer: {err}\n")

    async def _read_line(self) -> str:
        """One line of input from a daemon thread: Ctrl-C stops the run without waiting for Enter."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str] = loop.create_future()

        def give(text: str) -> None:
            if not line.done():
                line.set_result(text)

        def read() -> None:
            text = self.stdin.readline()
            try:
                loop.call_soon_threadsafe(give, text)
            except RuntimeError:  # the run ended meanwhile
                pass

        threading.Thread(target=read, name="agentflow-ask", daemon=True).start()
        return await line
