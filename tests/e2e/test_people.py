"""People in the loop (`model = "human"`): a run stops `waiting` (exit 4) at the nodes a person
answers, after everything that does not depend on them; `agentflow answer` checks and stores an
answer; `--resume` continues with it; later runs reuse it by key; `--interactive` asks on a
terminal. Real `agentflow` subprocesses, a real DuckDB file, a real pty."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import duckdb

from runtime_support import DB, af, approval, base_env, last_run, ok, result_json, show, wait_for_answer, write


RECORD_SPEC = """
defaults {
  model = "scripted"
}

type Verdict {
  ok: bool
  reasons: list[str]
}

role writer {
  task draft(topic: str) -> str { prompt = "Draft about {topic}." }
}

role reviewer {
  model = "human"
  %s
  task judge(text: str) -> Verdict { prompt = "Judge this: {text}" }
}

choreography main(topic: str = "tea") -> json {
  text = writer.draft(topic)
  verdict = reviewer.judge(text)
  return {text: text, verdict: verdict}
}
"""


def query(tmp_path: Path, sql: str, *params) -> list[tuple]:
    with duckdb.connect(str(tmp_path / DB), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_a_human_node_stops_the_run_waiting_with_exit_4_and_says_how_to_answer(tmp_path):
    approval(tmp_path)
    result = ok(af(tmp_path, "run", "approval.agentflow"), 4)
    run_id = last_run(tmp_path)["run_id"]
    assert result.stdout == ""  # no result: the run has not finished
    err = result.stderr
    assert 'waiting  main/decision  (a person answers approver.review, type "approve" | "revise")' in err
    assert 'Publish this announcement as it is ("approve")' in err  # the prompt the person reads
    assert f"answer: agentflow answer {run_id} main/decision approve" in err
    assert f"run {run_id} is waiting for 1 answer" in err and f"--resume {run_id}" in err
    assert last_run(tmp_path, cli=True)["status"] == "waiting"
    nodes = show(tmp_path, run_id, cli=True)
    assert nodes["main/decision"]["status"] == "waiting"
    # what does not depend on the answer ran meanwhile; what does was not started (nor skipped)
    assert nodes["main/text"]["status"] == nodes["main/title"]["status"] == "succeeded"
    assert not any(n.startswith("main/final") for n in nodes)
    # the public views say it too
    assert query(tmp_path, "SELECT status FROM runs") == [("waiting",)]
    assert query(tmp_path, "SELECT status FROM node_runs WHERE node_id = 'main/decision'") == [("waiting",)]


def test_an_answer_that_does_not_fit_is_exit_2_and_stores_nothing(tmp_path):
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    before = query(tmp_path, "SELECT count(*) FROM _results")
    result = ok(af(tmp_path, "answer", run_id, "main/decision", "maybe"), 2)
    assert result.stderr.startswith('error: the answer does not fit "approve" | "revise": ')
    assert result.stderr.count("\n") == 1
    assert query(tmp_path, "SELECT count(*) FROM _results") == before
    assert query(tmp_path, "SELECT status FROM node_runs WHERE node_id = 'main/decision'") == [("waiting",)]
    assert query(tmp_path, "SELECT kind FROM _turns WHERE node_id = 'main/decision'") == [("question",)]


def test_answering_an_unknown_run_or_node_or_one_that_is_not_waiting_is_exit_2(tmp_path):
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    for args, message in [
        (("nope", "main/decision", "approve"), "error: there is no run nope in the database"),
        ((run_id, "main/nope", "approve"), f"error: run {run_id} has no node main/nope"),
        ((run_id, "main/text", "approve"), f"error: node main/text of run {run_id} is not waiting for an "
                                           f"answer (it is succeeded)"),
        ((run_id, "main/decision"), "error: give the answer as VALUE or with --file F"),
        ((run_id, "main/decision", "approve", "--db", "none.duckdb"), "error: no run database at none.duckdb"),
    ]:
        result = ok(af(tmp_path, "answer", *args), 2)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_an_answer_then_resume_finishes_the_run_with_it(tmp_path):
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    answered = ok(af(tmp_path, "answer", run_id, "main/decision", '"revise"', "--by", "alice"))
    assert f"answered main/decision of run {run_id}" in answered.stderr
    assert query(tmp_path, "SELECT payload->>'by', payload->>'value' FROM _turns WHERE kind = 'answer'") == [
        ("alice", "revise")]
    assert query(tmp_path, "SELECT created_at IS NOT NULL FROM _turns WHERE kind = 'answer'") == [(True,)]
    value = result_json(ok(af(tmp_path, "run", "approval.agentflow", "--resume")))
    assert value["decision"] == "revise" and "writer.revise" in value["text"]  # the conditional acted on it
    assert last_run(tmp_path)["run_id"] == run_id and last_run(tmp_path)["status"] == "succeeded"
    nodes = show(tmp_path, run_id)
    assert nodes["main/decision"]["status"] == "succeeded"
    assert {n for n, r in nodes.items() if r["cached"]} == {"main/text", "main/title", "main/decision"}


def test_a_stored_answer_is_reused_by_key_on_a_later_run(tmp_path):
    write(tmp_path / "review.agentflow", RECORD_SPEC % "")
    (tmp_path / "verdict.json").write_text('{"ok": false, "reasons": ["too short"]}\n')
    run_id = wait_for_answer(tmp_path, "review.agentflow")
    ok(af(tmp_path, "answer", run_id, "main/verdict", "--file", "verdict.json"))
    first = result_json(ok(af(tmp_path, "run", "review.agentflow", "--resume")))
    assert first["verdict"] == {"ok": False, "reasons": ["too short"]}
    again = ok(af(tmp_path, "run", "review.agentflow"))  # a new run: the same key, the stored answer
    assert result_json(again) == first
    assert last_run(tmp_path)["run_id"] != run_id
    assert show(tmp_path, last_run(tmp_path)["run_id"])["main/verdict"]["cached"]
    other = ok(af(tmp_path, "run", "review.agentflow", "--input", "topic=coffee"), 4)  # another draft: asked anew
    assert "waiting  main/verdict" in other.stderr


def test_a_human_task_with_cache_false_asks_again_on_a_later_run(tmp_path):
    write(tmp_path / "review.agentflow", (RECORD_SPEC % "").replace(
        'prompt = "Judge this: {text}" }', 'prompt = "Judge this: {text}"  cache = false }'))
    run_id = wait_for_answer(tmp_path, "review.agentflow")
    ok(af(tmp_path, "answer", run_id, "main/verdict", '{"ok": true, "reasons": []}'))
    ok(af(tmp_path, "run", "review.agentflow", "--resume"))  # its own run uses the answer
    ok(af(tmp_path, "run", "review.agentflow"), 4)


def test_a_record_answer_is_validated_with_the_output_schema(tmp_path):
    write(tmp_path / "review.agentflow", RECORD_SPEC % "")
    waiting = ok(af(tmp_path, "run", "review.agentflow"), 4)
    run_id = last_run(tmp_path)["run_id"]
    # the command to answer shows the shape of the answer
    assert f"""answer: agentflow answer {run_id} main/verdict '{{"ok": true, "reasons": []}}'""" in waiting.stderr
    for bad, why in [('{"ok": "yes", "reasons": []}', "ok: Input should be a valid boolean"),
                     ('{"ok": true}', "reasons: Field required"),
                     ("true", "Input should be a valid dictionary"),
                     ("{not json", "the answer is not JSON")]:
        result = ok(af(tmp_path, "answer", run_id, "main/verdict", bad), 2)
        assert why in result.stderr, result.stderr
    assert query(tmp_path, "SELECT status FROM node_runs WHERE node_id = 'main/verdict'") == [("waiting",)]


def test_dependent_fan_out_items_wait_while_the_others_finish(tmp_path):
    write(tmp_path / "batch.agentflow", """
        defaults { model = "scripted" }
        role worker { task size(x: str) -> int { prompt = "Size of {x}" } }
        role person {
          model = "human"
          task keep(x: str) -> bool { prompt = "Keep {x}?" }
        }
        choreography main(xs: list[str] = ["a", "b", "c"]) -> json {
          kept = for x in xs {
            k = person.keep(x)
            n = worker.size(x)
            yield {x: x, keep: k, n: n}
          }
          return kept
        }
    """)
    result = ok(af(tmp_path, "run", "batch.agentflow"), 4)
    run_id = last_run(tmp_path)["run_id"]
    assert f"run {run_id} is waiting for 3 answers" in result.stderr
    nodes = show(tmp_path, run_id)
    assert {n: r["status"] for n, r in nodes.items() if n.endswith(("/k", "/n"))} == {
        **{f"main/kept[{i}]/k": "waiting" for i in range(3)}, **{f"main/kept[{i}]/n": "succeeded" for i in range(3)}}
    assert nodes["main/kept"]["status"] == "waiting"
    for i, keep in enumerate(["true", "false", "true"]):
        ok(af(tmp_path, "answer", run_id, f"main/kept[{i}]/k", keep))
    value = result_json(ok(af(tmp_path, "run", "batch.agentflow", "--resume")))
    assert [item["keep"] for item in value] == [True, False, True]


def test_the_interactive_run_asks_on_the_terminal_until_the_answer_fits(tmp_path):
    approval(tmp_path)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", "run", "approval.agentflow", "--interactive"],
                            cwd=tmp_path, env=base_env(), stdin=terminal, stderr=terminal, stdout=subprocess.PIPE)
    os.close(terminal)
    seen = b""
    try:
        seen += read_until(controller, b"answer> ")
        os.write(controller, b"maybe\n")
        seen += read_until(controller, b"answer> ")
        os.write(controller, b"approve\n")
        out, _ = proc.communicate(timeout=60)
        seen += read_until(controller, b"", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    text = seen.decode()
    assert proc.returncode == 0, text
    assert 'Publish this announcement as it is ("approve")' in text  # the prompt, shown inline
    assert 'not a valid answer: the answer does not fit "approve" | "revise"' in text
    assert "Traceback" not in text
    value = json.loads(out)
    assert value["decision"] == "approve" and "writer.draft" in value["text"]
    run_id = last_run(tmp_path)["run_id"]
    assert last_run(tmp_path)["status"] == "succeeded"
    assert query(tmp_path, "SELECT kind FROM _turns WHERE node_id = 'main/decision' ORDER BY seq") == [
        ("question",), ("answer",)]
    assert show(tmp_path, run_id)["main/decision"]["status"] == "succeeded"


def read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    """What the terminal shows until `marker` (everything within `timeout` for b"")."""
    import time
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (marker and marker in data):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            data += chunk
    assert not marker or marker in data, data.decode(errors="replace")
    return data


def test_interactive_without_a_terminal_is_exit_2(tmp_path):
    approval(tmp_path)
    result = ok(af(tmp_path, "run", "approval.agentflow", "--interactive"), 2)
    assert result.stderr.startswith("error: --interactive asks on a terminal, and this run has none")
    assert not (tmp_path / DB).exists()  # nothing ran, nothing was written


def test_model_override_does_not_replace_a_person(tmp_path):
    approval(tmp_path)
    result = ok(af(tmp_path, "run", "approval.agentflow", "--model", "scripted"), 4)
    assert "waiting  main/decision" in result.stderr


def test_a_failed_node_elsewhere_makes_the_run_failed_not_waiting(tmp_path):
    write(tmp_path / "mixed.agentflow", """
        defaults { model = "scripted" }
        tool broken(x: str) -> str { command = ["false", "{x}"] }
        role person {
          model = "human"
          task ok(x: str) -> bool { prompt = "OK {x}?" }
        }
        choreography main(x: str = "a") -> json {
          fine = person.ok(x)
          bad = broken(x)
          return {fine: fine, bad: bad}
        }
    """)
    result = ok(af(tmp_path, "run", "mixed.agentflow"), 3)
    assert "failed at main/bad" in result.stderr
    run = last_run(tmp_path)
    assert run["status"] == "failed"
    assert show(tmp_path, run["run_id"])["main/fine"]["status"] == "waiting"


def test_the_interactive_run_waits_when_the_terminal_input_ends(tmp_path):
    approval(tmp_path)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agentflow", "run", "approval.agentflow", "--interactive"],
                            cwd=tmp_path, env=base_env(), stdin=terminal, stderr=terminal, stdout=subprocess.PIPE)
    os.close(terminal)
    try:
        read_until(controller, b"answer> ")
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        proc.communicate(timeout=60)
        seen = read_until(controller, b"", timeout=2).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert proc.returncode == 4
    assert "answer: agentflow answer" in seen
    assert last_run(tmp_path)["status"] == "waiting"


def test_a_model_that_delegates_to_a_person_waits_with_it_and_resumes_from_its_journal(tmp_path):
    (tmp_path / "script.json").write_text(json.dumps({"rules": [
        {"task": "assistant.plan", "turn": 1, "tool_calls": [{"name": "person__confirm", "arguments": {"x": "go?"}}]},
        {"task": "assistant.plan", "turn": 2, "echo": "last"}]}))
    write(tmp_path / "ask.agentflow", """
        role person {
          model = "human"
          task confirm(x: str) -> str { prompt = "Please confirm: {x}" }
        }
        role assistant {
          model = "scripted:script.json"
          tools = [person.confirm]
          task plan(goal: str) -> str { prompt = "Plan {goal}; ask a person first." }
        }
        choreography main(goal: str = "launch") -> str {
          p = assistant.plan(goal)
          return p
        }
    """)
    result = ok(af(tmp_path, "run", "ask.agentflow"), 4)
    run_id = last_run(tmp_path)["run_id"]
    asked = "main/p/person.confirm#1"
    assert f"waiting  {asked}" in result.stderr and "Please confirm: go?" in result.stderr
    assert f"run {run_id} is waiting for 1 answer" in result.stderr
    nodes = show(tmp_path, run_id)
    assert nodes["main/p"]["status"] == nodes[asked]["status"] == "waiting"
    parent = ok(af(tmp_path, "answer", run_id, "main/p", "x"), 2)
    assert parent.stderr.startswith(f"error: node main/p of run {run_id} waits for nodes inside it that a person")
    ok(af(tmp_path, "answer", run_id, asked, "confirmed, go ahead"))
    assert result_json(ok(af(tmp_path, "run", "ask.agentflow", "--resume"))) == "confirmed, go ahead"
    assert query(tmp_path, "SELECT count(*) FROM _turns WHERE node_id = 'main/p' AND kind = 'assistant'") == [(2,)]
