"""Persistent agents (`memory = "persistent"`) and the handoff of non-idempotent tools, through
the real CLI: an agent's conversation outlives its run (the next run's model sees it, observed
at the litellm test server), `agentflow agents` lists, shows and resets it, a kill at any
commit point leaves it consistent on resume, and a non-idempotent tool killed mid-call is not
run again: its model is told the call was interrupted."""
from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from resume_scenarios import EXIT_CODES, Scenario, differences, observe, project, reference, run, run_status
from runtime_support import (DB, HANDOFF_TOOLS, af, af_start, base_env, llm_defaults, ok, outputs, ran, requests_with,
                             result_json, reused, runs, show, stop, wait_until, write)

from agentflow.runtime.history import node_detail
from agentflow.runtime.store import Store

BODY = """
role scribe {
  memory = "persistent"
  agent = "journal"
  task note(text: str) -> str { prompt = "NOTE {text}" }
}

role reader {
  memory = "persistent"
  agent = "journal"
  task recall(hint: str) -> str { prompt = "RECALL {hint}" }
}

choreography main(text: str) -> json {
  n = scribe.note(text)
  r = reader.recall(n)
  return [n, r]
}
"""


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _call(prompt: str) -> list[dict]:
    """A call's turns as the echoing test server makes them."""
    return [_turn("user", prompt), _turn("assistant", "echo: " + prompt)]


def agents(cwd: Path) -> list[dict]:
    return json.loads(ok(af(cwd, "agents", "--json")).stdout)


def agent_turns(cwd: Path) -> list[tuple]:
    """The public view, as a user queries it."""
    con = duckdb.connect(str(cwd / DB), read_only=True)
    try:
        return con.execute("SELECT agent, generation, turn, role, content, node_id FROM agent_turns "
                           "ORDER BY agent, generation, turn").fetchall()
    finally:
        con.close()


def test_a_persistent_agent_remembers_earlier_runs(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    first = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=alpha")))
    assert first == ["echo: NOTE alpha", "echo: RECALL echo: NOTE alpha"]
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=beta"))

    # the second run's calls see the first run's turns, then their own run's, in order
    earlier = _call("NOTE alpha") + _call("RECALL echo: NOTE alpha")
    assert requests_with(server, "NOTE beta")[0]["messages"] == earlier + [_turn("user", "NOTE beta")]
    assert requests_with(server, "RECALL echo: NOTE beta")[0]["messages"] == \
        earlier + _call("NOTE beta") + [_turn("user", "RECALL echo: NOTE beta")]

    [listed] = agents(tmp_path)
    assert {k: listed[k] for k in ("agent", "generation", "turns", "runs")} == \
        {"agent": "journal", "generation": 0, "turns": 8, "runs": 2}
    assert listed["tokens"] > 0 and listed["last_used"]
    shown = ok(af(tmp_path, "agents", "show", "journal")).stdout
    assert shown.startswith("agent journal (generation 0, 8 turns)\n")
    assert shown.index("NOTE alpha") < shown.index("NOTE beta")
    assert [(r[2], r[3], r[4], r[5]) for r in agent_turns(tmp_path)][:2] == [
        (0, "user", "NOTE alpha", "main/n"), (1, "assistant", "echo: NOTE alpha", "main/n")]

    unknown = ok(af(tmp_path, "agents", "show", "jurnal"), 2)
    assert unknown.stderr == ("error: there is no persistent agent jurnal; did you mean journal? "
                              "`agentflow agents` lists them\n")


def test_reset_starts_afresh_and_keeps_the_old_history(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=alpha"))
    reset = ok(af(tmp_path, "agents", "reset", "journal", "--db", DB))
    assert "generation 1" in reset.stderr
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=beta"))

    assert requests_with(server, "NOTE beta")[0]["messages"] == [_turn("user", "NOTE beta")]
    [listed] = agents(tmp_path)
    assert (listed["generation"], listed["turns"]) == (1, 4)
    old = json.loads(ok(af(tmp_path, "agents", "show", "journal", "--generation", "0", "--json")).stdout)
    assert [t["message"]["content"] for t in old["turns"]] == [
        "NOTE alpha", "echo: NOTE alpha", "RECALL echo: NOTE alpha", "echo: RECALL echo: NOTE alpha"]
    assert [(g, t) for _, g, t, *_ in agent_turns(tmp_path)] == [(0, 0), (0, 1), (0, 2), (0, 3),
                                                                  (1, 0), (1, 1), (1, 2), (1, 3)]
    missing = ok(af(tmp_path, "agents", "reset", "nobody"), 2)
    assert missing.stderr.startswith("error: there is no persistent agent nobody;")
    assert ok(af(tmp_path, "agents", "show", "journal", "--generation", "2"), 2).stderr == \
        "error: agent journal has no generation 2; `agentflow agents` shows its current one\n"
    assert ok(af(tmp_path, "agents", "--db", "elsewhere.duckdb"), 2).stderr == \
        "error: no run database at elsewhere.duckdb; run `agentflow run` first, or pass --db\n"


EXAMPLE = Path(__file__).resolve().parents[2] / "specs" / "study_journal.agentflow"


def test_the_example_runs_out_of_the_box_and_its_tutor_remembers(tmp_path):
    first = result_json(ok(af(tmp_path, "run", str(EXAMPLE))))
    assert set(first) == {"lesson", "questions", "progress"}
    ok(af(tmp_path, "run", str(EXAMPLE), "--input", "topic=decimals"))
    again = runs(tmp_path)[0]["run_id"]
    # the second run's calls all ran: each one's key includes the conversation before it
    assert ran(show(tmp_path, again)) == {"main/lesson", "main/questions", "main/progress"}
    [tutor] = agents(tmp_path)
    assert (tutor["agent"], tutor["turns"], tutor["runs"]) == ("tutor", 12, 2)
    shown = ok(af(tmp_path, "agents", "show", "tutor")).stdout
    assert shown.index("on fractions") < shown.index("on decimals")


# ---------------------------------------------------------------- kill -9 at every commit point

AGENT_SCENARIO = Scenario("""
    role a {
      memory = "persistent"
      agent = "keeper"
      tools = [mark]
      task say(q: str) -> str { prompt = "SAY {q}" }
    }
    role b {
      memory = "persistent"
      agent = "keeper"
      task hear(q: str) -> str { prompt = "HEAR {q}" }
    }
    choreography main() -> json {
      x = a.say("one")
      y = b.hear(x)
      z = a.say("two")
      return [x, y, z]
    }
    """, rules=tuple({"node": node, "turn": 1, "tool_calls": [{"name": "mark", "arguments": {"x": node}}]}
                     for node in ("main/x", "main/z")))


def _conversation(root: Path) -> list[tuple]:
    """The agent's turns as stored (its generation, number, node and message), each once."""
    con = duckdb.connect(str(root / DB), read_only=True)
    try:
        return con.execute("SELECT generation, turn, node_id, message FROM _agent_turns ORDER BY turn").fetchall()
    finally:
        con.close()


def _killed_then_resumed(tmp: Path, commit: int, want, conversation: list, env: dict, engine: tuple,
                         lossy: bool) -> list[str] | None:
    """Kills the run right after its `commit`-th commit point and resumes it: how the outcome
    and the agent's conversation differ from an uninterrupted run's; None when the run ended first."""
    root = project(tmp, f"cell-{commit}", AGENT_SCENARIO)
    first = run(root, env, *engine, fault=f"kill@{commit}")
    if first.returncode == 0:
        return None
    problems = [] if first.returncode == EXIT_CODES["kill"] else [f"exit {first.returncode}: {first.stderr[-500:]}"]
    if run_status(root) == "succeeded":  # killed after its last commit: all is stored, and
        return problems + [f"conversation {got}" for got in [_conversation(root)] if got != conversation]
    resumed = run(root, env, *engine, "--resume")
    if resumed.returncode != 0:
        return problems + [f"--resume exited {resumed.returncode}: {resumed.stderr[-800:]}"]
    got = _conversation(root)
    if got != conversation:
        problems.append(f"conversation {got} != {conversation}")
    with Store.open_reader(root / DB) as store:
        problems += store.check_consistency()
    return problems + differences(observe(root, resumed.stdout), want, lossy)


@pytest.mark.parametrize("durability", ("group", "strict"))
def test_killed_at_every_commit_the_conversation_resumes_without_lost_or_repeated_turns(durability, tmp_path):
    env = base_env()
    engine = ("--durability", durability)
    want = reference(tmp_path, AGENT_SCENARIO, env, engine)
    conversation = _conversation(tmp_path / "reference")
    assert [(turn, node) for _, turn, node, _ in conversation] == [
        (0, "main/x"), (1, "main/x"), (2, "main/x"), (3, "main/x"), (4, "main/y"), (5, "main/y"),
        (6, "main/z"), (7, "main/z"), (8, "main/z"), (9, "main/z")]
    failures, commit = [], 0
    with ThreadPoolExecutor(3) as pool:
        while True:
            batch = list(pool.map(lambda n: _killed_then_resumed(tmp_path, n, want, conversation, env, engine,
                                                                 durability == "group"),
                                  range(commit + 1, commit + 4)))
            done = [p for p in batch if p is not None]
            failures += [f"kill@{commit + i + 1}: {p}" for i, ps in enumerate(done) for p in ps]
            commit += len(done)
            if len(done) < len(batch):
                break
    assert commit > 10, f"the run had only {commit} commit points"
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- handoff of tools killed mid-call

@pytest.mark.parametrize("idempotent", (False, True))
def test_a_tool_killed_mid_call_is_handed_off_unless_idempotent(idempotent, tmp_path, server):
    write(tmp_path / "tools.py", HANDOFF_TOOLS)
    write(tmp_path / "flow.agentflow", llm_defaults(server) + f"""
        tool pay(amount: int) -> str {{
          python = "tools:pay"
          description = "Pays an amount."
          idempotent = {str(idempotent).lower()}
        }}
        role clerk {{
          tools = [pay]
          task settle(amount: int) -> str {{ prompt = "SETTLE {{amount}}" }}
        }}
        choreography main() -> str {{
          s = clerk.settle(30)
          return s
        }}
        """)
    server.add_rule("SETTLE 30", {"tool_calls": [{"id": "call_pay", "name": "pay", "arguments": {"amount": 30}}]},
                    times=1)
    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        wait_until(lambda: (tmp_path / "pay.log").exists(), timeout=30, what="the tool to start")
        # its model turn committed (a strict commit precedes a non-idempotent tool, the group
        # window an idempotent one): resumed, the model is not asked for the call again
        run_id = runs(tmp_path)[0]["run_id"]
        wait_until(lambda: any(m.get("tool_calls") for m in node_detail(str(tmp_path / DB), run_id, "main/s")
                               ["messages"]), what="the model's tool call journaled")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    outputs(proc)
    resumed = ok(af(tmp_path, "run", "flow.agentflow", "--resume"))

    final = requests_with(server, "SETTLE 30")[-1]["messages"]
    assert final[-1]["role"] == "tool" and final[-1]["tool_call_id"] == "call_pay"
    calls = (tmp_path / "pay.log").read_text().splitlines()
    if idempotent:  # run again, as before handoff existed
        assert calls == ["pay 30", "pay 30"]
        assert final[-1]["content"] == "paid 30"
    else:  # run once: the model is told its effect is unknown
        assert calls == ["pay 30"]
        assert final[-1]["content"].startswith("error: this call of pay was interrupted")
        assert "effect is unknown" in final[-1]["content"]
    assert result_json(resumed) == "echo: SETTLE 30"
    assert ran(show(tmp_path, runs(tmp_path)[0]["run_id"])) == {"main/s"}
    assert not reused(show(tmp_path, runs(tmp_path)[0]["run_id"]))


def test_a_run_between_a_kill_and_its_resume_leaves_each_call_of_the_agent_once(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server) + BODY)
    server.add_rule("RECALL echo: NOTE alpha", {"latency_ms": 8000}, times=1)
    proc = af_start(tmp_path, "run", "flow.agentflow", "--input", "text=alpha")
    try:
        wait_until(lambda: requests_with(server, "RECALL echo: NOTE alpha"), timeout=30, what="the recall call")
        killed = runs(tmp_path)[0]["run_id"]
        wait_until(lambda: show(tmp_path, killed)["main/n"]["status"] == "succeeded", what="the note stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    outputs(proc)
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=beta"))  # another run uses the agent meanwhile
    ok(af(tmp_path, "run", "flow.agentflow", "--input", "text=alpha", "--resume", killed))

    # the resumed run continues the conversation as it stands now: its note's key changed (the
    # agent's state before it did), so it runs again after the other run's calls, and its new
    # turns replace the ones the killed process stored: each call's turns are there once
    beta = _call("NOTE beta") + _call("RECALL echo: NOTE beta")
    notes = [r for r in server.requests if r["messages"][-1]["content"] == "NOTE alpha"]
    assert notes[-1]["messages"] == beta + [_turn("user", "NOTE alpha")]
    assert [(role, content, node) for _, _, _, role, content, node in agent_turns(tmp_path)] == [
        (m["role"], m["content"], node) for m, node in zip(
            beta + _call("NOTE alpha") + _call("RECALL echo: NOTE alpha"),
            ["main/n"] * 2 + ["main/r"] * 2 + ["main/n"] * 2 + ["main/r"] * 2)]
    with Store.open_reader(tmp_path / DB) as store:
        assert store.check_consistency() == []


def test_a_direct_call_of_a_non_idempotent_tool_killed_mid_call_fails_until_resumed_again(tmp_path):
    write(tmp_path / "tools.py", HANDOFF_TOOLS)
    write(tmp_path / "flow.agentflow", """
        tool pay(amount: int) -> str {
          python = "tools:pay"
          idempotent = false
        }
        choreography main() -> str {
          p = pay(30)
          return p
        }
        """)
    proc = af_start(tmp_path, "run", "flow.agentflow")
    try:
        wait_until(lambda: (tmp_path / "pay.log").exists(), timeout=30, what="the tool to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    outputs(proc)
    stopped = ok(af(tmp_path, "run", "flow.agentflow", "--resume"), 3)
    assert "tool pay was interrupted while it ran (the process running it stopped); its effect is unknown" \
        in stopped.stderr
    assert (tmp_path / "pay.log").read_text().splitlines() == ["pay 30"]
    # the person checked: the next resume runs it
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", "--resume"))) == "paid 30"
    assert (tmp_path / "pay.log").read_text().splitlines() == ["pay 30", "pay 30"]
