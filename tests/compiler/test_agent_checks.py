"""Persistent agents in the compiler: `memory = "persistent"` and `agent`, E302/E303 for
them, and the order of calls to one agent (E401, the plan's `session_after`)."""
from __future__ import annotations

from engine_support import compiled
from test_checks import codes, compile_text

TWO_ROLES_ONE_AGENT = """\
    defaults { model = "scripted" }
    role scribe {
      memory = "persistent"
      agent = "journal"
      task note(text: str) -> str { prompt = "Remember: {text}" }
    }
    role reader {
      memory = "persistent"
      agent = "journal"
      task recall(hint: str) -> str { prompt = "What do you remember about {hint}?" }
    }
    """


def test_a_persistent_role_compiles_and_its_plan_names_the_agent() -> None:
    text = TWO_ROLES_ONE_AGENT + """\
    choreography main(text: str) -> str {
      a = scribe.note(text)
      b = reader.recall(text)
      return a + b
    }
    """
    assert codes(text) == []
    plan = compiled(text).data
    assert plan["roles"]["scribe"]["memory"] == "persistent"
    assert plan["roles"]["scribe"]["agent"] == "journal"
    # two roles of one agent: the second call waits for the first, in program order
    assert plan["body"]["bindings"]["b"]["session_after"] == ["a"]


def test_calls_to_one_agent_through_two_roles_can_deadlock() -> None:
    _, diags = compile_text(TWO_ROLES_ONE_AGENT + """\
    choreography main(text: str) -> str {
      a = scribe.note(b)
      b = reader.recall(text)
      return a
    }
    """)
    assert [(d.code, d.primary.span.line) for d in diags] == [("E401", 13)]
    labels = [label.message for label in (diags[0].primary, *diags[0].secondary)]
    assert "waits for `a` (its earlier call to persistent agent `journal`)" in labels
    assert diags[0].help.startswith("calls to a persistent agent run one at a time")


def test_roles_of_different_agents_are_not_ordered() -> None:
    text = TWO_ROLES_ONE_AGENT.replace('agent = "journal"\n      task recall', 'agent = "diary"\n      task recall') + """\
    choreography main(text: str) -> str {
      a = scribe.note(b)
      b = reader.recall(text)
      return a
    }
    """
    assert codes(text) == []


def test_agent_without_persistent_memory_and_bad_names_are_e302() -> None:
    _, diags = compile_text("""\
        defaults { model = "scripted" }
        role scribe {
          agent = "journal"
          task note(text: str) -> str { prompt = "{text}" }
        }
        role other {
          memory = "persistent"
          agent = "no spaces"
          task note(text: str) -> str { prompt = "{text}" }
        }
        role third {
          memory = "forever"
          task note(text: str) -> str { prompt = "{text}" }
        }
        choreography main(text: str) -> str {
          a = scribe.note(text)
          b = other.note(text)
          c = third.note(text)
          return a + b + c
        }
        """)
    assert [(d.code, d.primary.span.line, d.message) for d in diags] == [
        ("E302", 3, "role `scribe` names an agent but its memory is not persistent"),
        ("E302", 8, '`agent` must be a name of letters, digits, `_`, `-` and `.`, not "no spaces"'),
        ("E302", 12, '`memory` must be "none", "session" or "persistent", not "forever"'),
    ]


def test_e303_a_persistent_role_with_replicas() -> None:
    _, diags = compile_text("""\
        defaults { model = "scripted" }
        role scribe {
          memory = "persistent"
          replicas = 2
          task note(text: str) -> str { prompt = "{text}" }
        }
        choreography main(text: str) -> str {
          a = scribe.note(text)
          return a
        }
        """)
    assert [(d.code, d.message) for d in diags] == [("E303", "persistent role `scribe` cannot have `replicas = 2`")]


def test_a_tool_may_be_declared_not_idempotent() -> None:
    text = """\
        defaults { model = "scripted" }
        tool pay(amount: int) -> str { command = ["echo", "{amount}"]  idempotent = false }
        tool look(x: str) -> str { command = ["echo", "{x}"] }
        role clerk {
          tools = [pay, look]
          task go(x: str) -> str { prompt = "{x}" }
        }
        choreography main(x: str) -> str {
          a = clerk.go(x)
          return a
        }
        """
    assert codes(text) == []
    plan = compiled(text).data
    assert plan["tools"]["pay"]["idempotent"] is False
    assert "idempotent" not in plan["tools"]["look"]  # the default: plans without the attribute are unchanged


def test_e402_a_role_delegating_to_another_role_of_its_agent() -> None:
    _, diags = compile_text("""\
        defaults { model = "scripted" }
        role scribe {
          memory = "persistent"
          agent = "journal"
          tools = [reader.recall]
          task note(text: str) -> str { prompt = "{text}" }
        }
        role reader {
          memory = "persistent"
          agent = "journal"
          task recall(hint: str) -> str { prompt = "{hint}" }
        }
        choreography main(text: str) -> str {
          a = scribe.note(text)
          return a
        }
        """)
    assert [(d.code, d.primary.span.line, d.message) for d in diags] == [
        ("E402", 5, "deadlock: `scribe` can call `reader.recall`, and both continue persistent agent `journal`")]
