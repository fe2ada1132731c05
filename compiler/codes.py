"""The one registry of diagnostic codes: each code with its severity, a short title, and an
explanation (what triggers it, a small wrong program, how to fix it).

Checks report `Code` members (`sink.report(Code.E302, ...)`), so a code is written out only
here; `agentflow explain` renders these entries. Every example is a whole program that the
real compiler reports under exactly its code (tests/compiler/test_explain.py compiles them).
"""
from __future__ import annotations

import textwrap
from enum import Enum

from .diagnostics import Severity, did_you_mean

ERROR, WARNING = Severity.ERROR, Severity.WARNING
WIDTH = 88  # columns of the explanation text

_WRITER = '''defaults {
  model = "scripted"
}

role writer {
  task draft(topic: str) -> str {
    prompt = "Write about {topic}."
  }
}
'''

_PLAN_TOOL = '''type Plan {
  modules: list[str]
}

tool load(path: str) -> Plan {
  python = "tools.plans:load"
}
'''


class Code(Enum):
    """A diagnostic code; the member's name (`E302`) is the code users see."""

    def __init__(self, severity: Severity, title: str, explanation: str, example: str, fix: str) -> None:
        self.severity = severity
        self.title = title
        self.explanation = explanation
        self.example = example
        self.fix = fix

    E001 = (ERROR, "syntax error",
            "The parser met a token or character it did not expect there; the message says, in "
            "words, what it found and what it expected. A keyword where a name could stand gets a "
            "help line saying that it is reserved. Parsing resumes at the next top-level "
            "declaration, with at most 20 syntax errors reported.",
            '''choreography main(x: str) -> str {
  y = x +
  return y
}
''',
            "Complete the expression (`y = x + \"!\"`), or remove the stray token the message points at.")

    E002 = (ERROR, "unterminated string",
            'A `"` string that reaches the end of its line, or a `"""` string that reaches the end '
            "of the file.",
            '''choreography main(x: str) -> str {
  return "unfinished
}
''',
            'Close the string on the same line (`"unfinished"`), or use `"""` for text that spans lines.')

    E003 = (ERROR, "nested too deeply",
            "An expression or type nested more than 100 levels deep, more than 10000 brackets and "
            "constructs open at once, a type nested more than 100 levels deep counting the fields "
            "of its record types, or a choreography that nests more than 100 levels deep once the "
            "choreographies it calls are inlined into it. The example returns a list 101 levels deep.",
            "choreography main() -> json {\n  return " + "[" * 101 + "1" + "]" * 101 + "\n}\n",
            "Split a deep expression into named bindings, use `json` for the deeper part of a type, "
            "or call fewer choreographies inside each other.")

    E101 = (ERROR, "undefined name",
            "A name that is not a parameter, a binding of this or an enclosing scope, or a `for` "
            "variable; `prev` outside a `repeat` body; a name in `after` that is not a binding. The "
            "help line suggests a close name, or says what the name is when it is a role, tool or "
            "choreography used as a value.",
            '''choreography main(plan: list[str]) -> list[str] {
  out = for item in pln {
    yield item
  }
  return out
}
''',
            "Fix the spelling (`plan`), or bind the name before using it.")

    E102 = (ERROR, "undefined role",
            "`x.task(...)` where `x` is not a role (also a `tools` entry `x.task`). When `x` is a "
            "binding or parameter, the message says that values have no methods.",
            '''choreography main(topic: str) -> str {
  text = wrtier.draft(topic)
  return text
}
''',
            "Name a declared role (`writer.draft(topic)`), or declare the role.")

    E103 = (ERROR, "no such task",
            "`role.task(...)` (or a `tools` entry `role.task`) where the role has no task of that "
            "name; the help line lists the role's tasks or suggests a close one.",
            _WRITER + '''
choreography main(topic: str) -> str {
  text = writer.drat(topic)
  return text
}
''',
            "Call one of the role's tasks (`writer.draft`), or add the task to the role.")

    E104 = (ERROR, "undefined tool",
            "A call of a plain name that is no tool, choreography or builtin; a role called like a "
            "function; a `tools` entry that names no tool; a call of something that is not callable "
            "(a binding, `x[0](...)`). In a program a model wrote (`run_program`), also a call of a "
            "tool or `role.task` that exists but is not granted to the model's role.",
            '''choreography main(text: str) -> int {
  n = count_words(text)
  return n
}
''',
            "Declare the tool (`tool count_words(text: str) -> int { ... }`), or call a task as `role.task(...)`; "
            "a program calls only what its role's `tools` grant.")

    E105 = (ERROR, "undefined type",
            "A type name that is not a built-in or declared type, a generic other than `list[T]`, "
            "or `list` without its element type.",
            '''choreography main(items: list[Item]) -> int {
  return len(items)
}
''',
            "Declare the type (`type Item { ... }`), or use a built-in type such as `str` or `json`.")

    E106 = (ERROR, "duplicate definition",
            "Two definitions of one name: types, tools, roles, choreographies, tasks of one role, "
            "parameters of one declaration, fields of one type or record literal, attributes of one "
            "block, bindings of one scope; a second `defaults` block; a name that is both a tool and "
            "a choreography; a binding with a parameter's or the `for` variable's name; `prev`, "
            "`iterations` or `converged` bound in a `repeat` body; a type named like a built-in "
            "type. The first definition is shown as a secondary label.",
            '''choreography main(x: str) -> str {
  y = x
  y = x + "!"
  return y
}
''',
            "Give the second definition its own name (`z = y + \"!\"`), or remove one of the two.")

    E107 = (ERROR, "undefined choreography, or no entry",
            "A call of a name that is close to a choreography's name but is not one; a file without "
            "any choreography; several choreographies and none named `main` (without `--entry`); "
            "an `--entry` that names no choreography.",
            '''choreography first(x: str) -> str {
  return x
}

choreography second(x: str) -> str {
  return x + "!"
}
''',
            "Name the entry choreography `main`, or choose one with `--entry NAME`.")

    E108 = (ERROR, "return and yield",
            "A choreography body without `return`, a `for` body without `yield`, two of either in "
            "one body, a `yield` at the top of a choreography, a `return` in a `for` body, or "
            "either in a `repeat` body. Each choreography body has exactly one `return` and each "
            "`for` body exactly one `yield`.",
            '''choreography main(xs: list[str]) -> list[str] {
  ys = for x in xs {
    z = x + "!"
  }
  return ys
}
''',
            "End the `for` body with `yield z` (and a choreography body with one `return`).")

    E201 = (ERROR, "type mismatch",
            "A value of the wrong type: an argument, a `return` or default value, the two sides of "
            "`if ... else` or the items of a list with no common type, a condition that is not "
            "`bool`, operands an operator does not take, an index that is not an `int`, a "
            "comprehension that contains a call, a `repeat max` that is not an `int`, or a "
            "comparison of a literal-union value with a string that is not one of its members.",
            '''defaults {
  model = "scripted"
}

type Review {
  verdict: "PASS" | "NEEDS_FIXES"
  feedback: str
}

role reviewer {
  task review(code: str) -> Review {
    prompt = "Review: {code}"
  }
}

choreography main(code: str) -> bool {
  review = reviewer.review(code)
  return review.verdict == "PAS"
}
''',
            "Give a value of the type the message expects (here `\"PASS\"`), or change the declared type.")

    E202 = (ERROR, "no such field",
            "`x.field` where the record type of `x` has no such field (the help line suggests a "
            "close one), or any field of a value that has no fields (a list, a string: the help "
            "line suggests `len` or an index).",
            _PLAN_TOOL + '''
choreography main(path: str) -> list[str] {
  plan = load(path)
  return plan.module
}
''',
            "Use a field the type declares (`plan.modules`), or add the field to the type.")

    E203 = (ERROR, "wrong arguments",
            "Too many arguments, a missing required argument, an unknown or repeated keyword "
            "argument, a positional argument after a keyword one, or a builtin called with the "
            "wrong number of arguments. The help line shows the signature.",
            '''tool shout(text: str) -> str {
  command = ["echo", "{text}"]
}

choreography main(x: str) -> str {
  y = shout(x, loud = true)
  return y
}
''',
            "Call it as its signature says (`shout(x)`), or add the parameter to the declaration.")

    E204 = (ERROR, "`for` over a non-list",
            "The expression after `in` (of a `for` or a comprehension) is not a list. When it is a "
            "record with a list field, the help line suggests that field.",
            _PLAN_TOOL + '''
choreography main(path: str) -> list[str] {
  plan = load(path)
  names = for m in plan {
    yield m
  }
  return names
}
''',
            "Iterate over a list (`for m in plan.modules`).")

    E205 = (ERROR, "bad template placeholder",
            "A `{...}` in a `prompt`, `system` or `command` element that names no parameter of its "
            "task or tool, a field its type does not have, or an index into a value that cannot be "
            "indexed; a malformed placeholder (`{}`, `{a b}`); a placeholder in a role's `system` "
            "that is not a parameter of every task of the role.",
            '''defaults {
  model = "scripted"
}

role writer {
  task draft(topic: str) -> str {
    prompt = "Write about {subject}."
  }
}

choreography main(topic: str) -> str {
  text = writer.draft(topic)
  return text
}
''',
            "Name a parameter of the task or tool (`{topic}`); write `{{` and `}}` for literal braces.")

    E301 = (ERROR, "role without a model",
            "A role that a choreography reaches (directly or by delegation) has no `model`, and "
            "`defaults` has none either. An unused role without a model gets W301 only.",
            '''role writer {
  task draft(topic: str) -> str {
    prompt = "Write about {topic}."
  }
}

choreography main(topic: str) -> str {
  text = writer.draft(topic)
  return text
}
''',
            'Give the role a `model = "..."`, or set one in `defaults` (`model = "scripted"` runs offline).')

    E302 = (ERROR, "bad attribute",
            "An attribute that its block does not take (the help line says where it belongs), a "
            "value of the wrong kind, a value below its minimum (`replicas`, `max_turns`, "
            "`max_tokens`, `max_context_tokens`, `max_spawn_depth` at least 1, `retries` and "
            "`temperature` at least 0, durations above 0), a `python` target not of the form "
            "`module.path:function`, an empty `command` or one with a non-string element, an unknown "
            "builtin, memory mode or `on_delegate_failure` (`\"fail\"` or `\"return\"`), a `tools` "
            "entry that is neither a name nor `role.task`, a task without `prompt`, a tool with no "
            "implementation or with more than one, a tool named `create_agent`, `call_agent` or "
            "`list_agents` granted to a role with `spawn = true` (which offers tools of those names).",
            '''defaults {
  model = "scripted"
}

role writer {
  replicas = 0
  task draft(topic: str) -> str {
    prompt = "Write about {topic}."
  }
}

choreography main(topic: str) -> str {
  text = writer.draft(topic)
  return text
}
''',
            "Give the attribute a value of the kind and range the message names (`replicas = 1`), "
            "or move it to the block the help line names.")

    E303 = (ERROR, "session role with replicas",
            "One conversation cannot be continued by several calls at once: `memory = \"session\"` "
            "(and `\"persistent\"`) requires `replicas = 1`, also when either comes from `defaults`.",
            '''defaults {
  model = "scripted"
  replicas = 4
}

role analyst {
  memory = "session"
  task note(fact: str) -> str {
    prompt = "Remember: {fact}"
  }
}

choreography main(fact: str) -> str {
  n = analyst.note(fact)
  return n
}
''',
            "Set `replicas = 1` on the session role, or drop `memory = \"session\"`.")

    E304 = (ERROR, "secret in a spec",
            "A string literal anywhere in the file looks like a key: `sk-` followed by 16 or more "
            "key characters, an AWS access key id (`AKIA` and 16 more), or a run of 32 or more "
            "letters and digits with at least four of each. Specs are shared and stored; keys "
            "must not be.",
            '''choreography main(x: str) -> str {
  return x + "AKIAIOSFODNN7EXAMPLE"
}
''',
            "Put the key in an environment variable and name that variable with `api_key_env`.")

    E305 = (ERROR, "human role with tools",
            "A role with `model = \"human\"` is answered by a person, who reads the task's prompt "
            "and gives an answer of its output type directly: there is no model/tool loop to use "
            "tools in, so granting it `tools` (its own or from `defaults`) is an error.",
            '''tool lookup(name: str) -> str {
  command = ["echo", "{name}"]
}

role approver {
  model = "human"
  tools = [lookup]
  task approve(draft: str) -> bool {
    prompt = "Approve this draft? {draft}"
  }
}

choreography main(draft: str) -> bool {
  ok = approver.approve(draft)
  return ok
}
''',
            "Remove `tools` from the human role; give tools to a role with a model that prepares "
            "what the person reads.")

    E401 = (ERROR, "deadlock (cycle of waits)",
            "The bindings of a body wait on each other in a cycle. A binding waits for each name it "
            "reads, each name in its `after`, and the previous call to the same `session` role or "
            "persistent agent (roles with the same `agent` share one order). "
            "The message lists every binding on the cycle, each with why it waits.",
            '''tool touch(path: str) -> str {
  builtin = "fs.write"
}

choreography main() -> str {
  a = touch("a.txt") after b
  b = touch("b.txt") after a
  return a + b
}
''',
            "Break the cycle: remove one of the waits (here one `after`).")

    E402 = (ERROR, "deadlock (delegation cycle)",
            "Roles that can delegate to each other in a cycle through `role.task` tools: a role's "
            "slot is held while it waits for its delegate, so the cycle could wait forever. The "
            "message shows the cycle. Also a role that can delegate to another role of its own "
            "persistent agent: its call keeps the agent's conversation, which the delegate waits for.",
            '''defaults {
  model = "scripted"
}

role alice {
  tools = [bob.ask]
  task ask(q: str) -> str {
    prompt = "{q}"
  }
}

role bob {
  tools = [alice.ask]
  task ask(q: str) -> str {
    prompt = "{q}"
  }
}

choreography main(q: str) -> str {
  answer = alice.ask(q)
  return answer
}
''',
            "Remove one `role.task` tool on the cycle, so that delegation only goes one way.")

    E403 = (ERROR, "recursion among choreographies",
            "A choreography that calls itself, directly or through others. Choreographies are "
            "inlined into the plan, so they cannot recurse.",
            '''choreography main(n: int) -> int {
  m = main(n - 1) if n > 0 else 0
  return m
}
''',
            "Use `repeat max N until ...` for a loop.")

    E404 = (ERROR, "unbounded `repeat`",
            "A `repeat` without `max`, or with a `max` that is not an integer literal or is less "
            "than 1. Every loop has a bound, so every run ends.",
            '''choreography main(x: int) -> int {
  r = repeat until y > 10 {
    y = x + 1
  }
  return r.y
}
''',
            "Give the loop a bound: `repeat max 5 until y > 10 { ... }`.")

    W301 = (WARNING, "unused role",
            "A role that no choreography reaches: neither called nor delegated to by a reached role.",
            _WRITER + '''
choreography main(x: str) -> str {
  return x
}
''',
            "Call one of its tasks, grant it as a tool to a used role, or remove the role.")

    W302 = (WARNING, "unused tool",
            "A tool that no role is granted and no choreography calls.",
            '''tool lint(path: str) -> str {
  command = ["ruff", "check", "{path}"]
}

choreography main(x: str) -> str {
  return x
}
''',
            "Call the tool, list it in a role's `tools`, or remove it.")

    W303 = (WARNING, "unused task",
            "A task of a reached role that is neither called nor granted as a delegation tool.",
            '''defaults {
  model = "scripted"
}

role writer {
  task draft(topic: str) -> str {
    prompt = "Write about {topic}."
  }
  task edit(text: str) -> str {
    prompt = "Edit: {text}"
  }
}

choreography main(topic: str) -> str {
  text = writer.draft(topic)
  return text
}
''',
            "Call the task, grant it as a `role.task` tool, or remove it.")

    W501 = (WARNING, "unused binding",
            "A binding whose value nothing reads: no other binding, no `return` or `yield`, no "
            "`after`. Its work still runs, but nothing uses the result.",
            _WRITER + '''
choreography main(topic: str) -> str {
  text = writer.draft(topic)
  title = writer.draft("a title for " + topic)
  return text
}
''',
            "Use the value; to run work only for its effect, name it in another binding's "
            "`after`; or remove the binding.")


def find_code(text: str) -> Code | None:
    """The code `text` names, in any letter case."""
    return Code.__members__.get(text.strip().upper())


def code_ranges() -> str:
    """`E001–E404 and W301–W501`: the span of each letter's codes, in registry order."""
    by_letter: dict[str, list[str]] = {}
    for code in Code:
        by_letter.setdefault(code.name[0], []).append(code.name)
    return " and ".join(f"{names[0]}–{names[-1]}" for names in by_letter.values())


def unknown_code_message(text: str) -> str:
    """One line for a code that is not in the registry, with the closest one if any."""
    shown = text if text.strip() and text.isprintable() else repr(text)
    message = f"no diagnostic code {shown}; codes are {code_ranges()}, see `agentflow explain --list`"
    hint = did_you_mean(text.strip().upper(), Code.__members__)
    return f"{message}; {hint}" if hint else message


def render_list() -> str:
    """One line per code: code, severity, title."""
    return "".join(f"{code.name}  {code.severity.value:<7}  {code.title}\n" for code in Code)


def render_explanation(code: Code) -> str:
    """The whole entry of one code, as `agentflow explain CODE` prints it."""
    example = textwrap.indent(code.example, "    ")
    return (f"{code.name} ({code.severity.value}): {code.title}\n\n{_paragraph(code.explanation)}\n\n"
            f"For example, this program gives {code.name}:\n\n{example}\n{_paragraph('Fix: ' + code.fix)}\n")


def _paragraph(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)
