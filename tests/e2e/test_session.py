"""Session memory through litellm, observed at the server: a `memory = "session"` role's calls
see the earlier calls of the run in program order (textual order, then list order across
`for` items, even when later items are ready first), and a small `max_context_tokens`
folds older calls into a summary without ever separating a tool call from its result."""
from __future__ import annotations

import json

from runtime_support import af, last_run, llm_defaults, ok, result_json, show, write

BODY = """
tool delay(x: str, ms: int) -> str {
  python = "tools:delay"
}

tool look(q: str) -> str {
  python = "tools:look"
  description = "Looks something up."
}

role scribe {
  memory = "session"
  task note(x: str) -> str { prompt = "NOTE {x}" }
}

role tiny {
  memory = "session"
  max_context_tokens = 40
  tools = [look]
  task ask(x: str) -> str { prompt = "TINY {x}" }
}

choreography main(items: list[str]) -> json {
  first = scribe.note("first")
  each = for it in items {
    ready = delay(it, 300 - 100 * len(it))
    n = scribe.note(ready)
    yield n
  }
  t1 = tiny.ask("one")
  t2 = tiny.ask("two" + t1)
  t3 = tiny.ask("three" + t2)
  t4 = tiny.ask("four" + t3)
  return {first: first, each: each, t4: t4}
}
"""
TOOLS = """
import asyncio

async def delay(x, ms):
    await asyncio.sleep(max(ms, 0) / 1000)
    return x

def look(q):
    return "FOUND " + q
"""


def _user_texts(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def test_session_order_and_compaction(tmp_path, server):
    write(tmp_path / "tools.py", TOOLS)
    write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    server.add_rule("TINY one", {"tool_calls": [{"id": "call_look", "name": "look", "arguments": {"q": "q1"}}]},
                    times=1)
    # item "a" is ready last and item "ccc" first: program order must still be a, bb, ccc
    result = ok(af(tmp_path, "run", "flow.agentflow", "--input", 'items=["a", "bb", "ccc"]'))
    value = result_json(result)
    assert value["each"] == ["echo: NOTE a", "echo: NOTE bb", "echo: NOTE ccc"]

    scribe = [r for r in server.requests if r["messages"][-1]["content"].startswith("NOTE ")]
    prompts = ["NOTE first", "NOTE a", "NOTE bb", "NOTE ccc"]
    assert [r["messages"][-1]["content"] for r in scribe] == prompts
    for i, request in enumerate(scribe):
        # every earlier call of the role, prompt then answer, in program order
        expected = []
        for p in prompts[:i]:
            expected += [{"role": "user", "content": p}, {"role": "assistant", "content": "echo: " + p}]
        assert request["messages"][:-1] == expected

    tiny = [r for r in server.requests if _user_texts(r) and _user_texts(r)[-1].startswith("TINY ")]
    assert len(tiny) == 5  # one call with a tool turn, then three plain calls
    for request in tiny:
        messages = request["messages"]
        for i, m in enumerate(messages):  # a tool call is always followed by its result
            if m.get("tool_calls"):
                ids = [c["id"] for c in m["tool_calls"]]
                assert [x.get("tool_call_id") for x in messages[i + 1:i + 1 + len(ids)]] == ids
            if m["role"] == "tool":
                assert any(m["tool_call_id"] in [c["id"] for c in x.get("tool_calls") or []]
                           for x in messages[:i])
    last = tiny[-1]["messages"]
    assert last[0]["role"] == "user" and last[0]["content"].startswith("Summary of earlier turns")
    assert "asked: TINY one" in last[0]["content"]
    assert not any(m["role"] in ("tool",) or m.get("tool_calls") for m in last)  # folded with its call
    assert last[-1]["content"].startswith("TINY four")
    assert len(json.dumps(last)) < len(json.dumps(tiny[-2]["messages"])) + 400

    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert all(nodes[f"main/each[{i}]/n"]["status"] == "succeeded" for i in range(3))
