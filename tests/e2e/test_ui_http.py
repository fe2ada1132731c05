"""`agentflow ui` over plain HTTP (no browser): its JSON and SVG, from the real command on a
real run database, while a run writes it, with and without Graphviz, and without its web framework."""
from __future__ import annotations

import getpass
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from runtime_support import (DB, af, af_start, approval, base_env, ok, outputs, result_json, stop, wait_for_answer,
                             wait_until)
from ui_support import (FAN_OUT_TEXT as FAN_OUT, TOPICS, finished_run, flow, get, get_json, post_answer,
                        start_held_run, ui_server)

@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished run of the flow and a ui serving its database: (cwd, run id, base URL)."""
    cwd = tmp_path_factory.mktemp("done")
    run_id = finished_run(cwd)
    with ui_server(cwd) as url:
        yield cwd, run_id, url


def test_the_list_has_each_run_with_status_counts_tokens_cost_and_duration(done):
    _, run_id, url = done
    (run,) = get_json(url + "/api/runs")
    assert run["run_id"] == run_id and run["flow"] == "flow" and run["status"] == "succeeded"
    assert run["nodes"] == 8 and run["succeeded"] == 8 and run["failed"] == 0
    assert run["prompt_tokens"] > 0 and run["completion_tokens"] > 0 and run["cost_usd"] == 0
    assert run["duration_s"] > 0 and run["started_at"].startswith("20")


def test_a_run_has_its_statuses_and_a_version_that_only_changes_with_them(done):
    _, run_id, url = done
    view = get_json(f"{url}/api/runs/{run_id}")
    assert view["statuses"]["main/drafts[1]/text"] == "succeeded"
    assert view["inputs"] == {"topics": ["owls", "tides", "maps"]}
    assert get_json(f"{url}/api/runs/{run_id}")["version"] == view["version"]
    assert "plan" not in view and view["colors"]["failed"]


def test_the_graph_collapses_a_fan_out_into_one_box_with_counts_and_expands_it(done):
    _, run_id, url = done
    code, kind, svg = get(f"{url}/api/runs/{run_id}/graph.svg")
    assert code == 200 and kind.startswith("image/svg+xml") and svg.startswith("<svg")
    assert f'id="n:{FAN_OUT}"' in svg and "[3] 3 succeeded" in svg
    assert 'id="n:main/drafts[0]/text"' not in svg
    expanded = get(f"{url}/api/runs/{run_id}/graph.svg?expand={FAN_OUT}")[2]
    assert f'id="n:{FAN_OUT}"' not in expanded
    assert all(f'id="n:main/drafts[{i}]/text"' in expanded for i in range(3))


def test_a_node_has_its_messages_output_prompt_usage_and_why_it_ran(done):
    _, run_id, url = done
    node = get_json(f"{url}/api/runs/{run_id}/node?id=main/drafts[0]/text")
    assert node["status"] == "succeeded" and node["role"] == "writer" and node["attempts"] == 1
    assert [m["role"] for m in node["messages"]] == ["assistant"]
    assert node["has_output"] and node["output"] == node["messages"][-1]["content"]
    assert node["prompt"] == {"filled": True, "prompt": "Write one line about owls."}
    assert node["inputs"]["topic"]["value"] == "owls" and node["prompt_tokens"] > 0
    assert node["why"] == "ran: never run" and node["duration_ms"] >= 0


def test_a_call_that_used_a_tool_has_the_call_and_its_result_among_its_messages(done):
    _, run_id, url = done
    node = get_json(f"{url}/api/runs/{run_id}/node?id=main/return@1")
    assert [m["role"] for m in node["messages"]] == ["assistant", "tool", "assistant"]
    (call,) = node["messages"][0]["tool_calls"]
    assert call["function"]["name"] == "shout" and node["messages"][1]["content"] == "THREE DRAFTS!"
    assert node["output"] == "THREE DRAFTS!" and node["llm_calls"] == 2


def test_an_input_that_an_earlier_node_produced_shows_its_value(done):
    _, run_id, url = done
    draft = get_json(f"{url}/api/runs/{run_id}/node?id=main/drafts[2]/text")
    held = get_json(f"{url}/api/runs/{run_id}/node?id=main/drafts[2]/held")
    assert held["inputs"]["text"] == {"hash": held["inputs"]["text"]["hash"], "known": True, "value": draft["output"]}
    assert held["prompt"] == {"filled": True} and held["messages"] == []  # a tool: no prompt, no model


def test_a_rerun_says_its_nodes_were_reused(tmp_path):
    finished_run(tmp_path)
    ok(af(tmp_path, "run", "flow.agentflow", *TOPICS))
    with ui_server(tmp_path) as url:
        newest = get_json(url + "/api/runs")[0]
        assert newest["cached"] == 8
        node = get_json(f"{url}/api/runs/{newest['run_id']}/node?id=main/drafts[2]/text")
        assert node["status"] == "cached" and node["why"].startswith("reused")
        assert "3 cached" in get(f"{url}/api/runs/{newest['run_id']}/graph.svg")[2]


def test_a_failed_run_shows_its_failed_nodes_in_red_with_their_error(tmp_path):
    (flow(tmp_path) / "fail").touch()
    ok(af(tmp_path, "run", "flow.agentflow", *TOPICS), 3)
    with ui_server(tmp_path) as url:
        (run,) = get_json(url + "/api/runs")
        assert run["status"] == "failed" and run["failed"] >= 1
        view = get_json(f"{url}/api/runs/{run['run_id']}")
        failed = sorted(n for n, s in view["statuses"].items() if s == "failed")
        assert "main/drafts" in failed and any(n.endswith("/held") for n in failed)
        node = get_json(f"{url}/api/runs/{run['run_id']}/node?id={failed[-1]}")
        assert "told to fail" in node["error"] and not node["has_output"]
        svg = get(f"{url}/api/runs/{run['run_id']}/graph.svg")[2]
    held_box = svg[svg.index('id="n:main/drafts[*]/held"'):].split("</g>")[0]
    assert view["colors"]["failed"] in held_box  # the fan-out box takes its worst status


def test_unknown_runs_and_nodes_are_404_with_a_message(done):
    _, run_id, url = done
    assert "there is no run nope" in get_json(f"{url}/api/runs/nope", 404)["error"]
    assert "has no node main/zz" in get_json(f"{url}/api/runs/{run_id}/node?id=main/zz", 404)["error"]
    assert get(f"{url}/api/runs/nope/graph.svg")[0] == 404


def box_ids(svg: str) -> set[str]:
    return set(re.findall(r'<g id="n:([^"]+)" class="node"', svg) + re.findall(r'<g class="node" id="n:([^"]+)"', svg))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed (CI installs it)")
def test_without_graphviz_the_graph_is_drawn_in_layers_with_the_same_boxes(done):
    cwd, run_id, url = done
    dotted = get(f"{url}/api/runs/{run_id}/graph.svg")[2]
    without_dot = base_env(PATH=str(Path(sys.executable).parent))  # the venv only
    with ui_server(cwd, env=without_dot) as plain:
        layered = get(f"{plain}/api/runs/{run_id}/graph.svg")[2]
    assert 'class="graph"' in dotted and 'class="graph"' not in layered  # dot's drawing, then ours
    assert box_ids(layered) == box_ids(dotted)
    assert {"main/drafts", FAN_OUT, "main/drafts[*]/held", "main/topics"} <= box_ids(layered)
    assert layered.count('class="edge"') >= 3 and "[3] 3 succeeded" in layered


def test_a_live_run_is_shown_running_and_then_done(tmp_path):
    proc, run_id = start_held_run(tmp_path)
    try:
        with ui_server(tmp_path) as url:
            live = get_json(f"{url}/api/runs/{run_id}")
            assert live["run"]["status"] == "running" and live["run"]["live"]
            assert live["statuses"]["main/drafts[0]/held"] == "running"
            assert "3 running" in get(f"{url}/api/runs/{run_id}/graph.svg")[2]
            (tmp_path / "go").touch()
            wait_until(lambda: get_json(f"{url}/api/runs/{run_id}")["run"]["status"] == "succeeded",
                       what="the page to see the run finish")
            assert proc.wait(30) == 0, outputs(proc)
    finally:
        stop(proc)


def timed_run(cwd, topics: int) -> float:
    """Strict durability: a commit per node, the writer busiest with the file (and the run long
    enough for a page polling once a second to see it running)."""
    started = time.monotonic()
    ok(af(cwd, "run", "flow.agentflow", "--no-cache", "--durability", "strict", "--input", f"topics={list(map(str, range(topics)))}"
          .replace("'", '"')))
    return time.monotonic() - started


def test_a_page_polling_hard_does_not_block_or_slow_the_writer(tmp_path):
    """A reader asks the writer to let go of the file: forty requests a second (twenty pages
    open) must cost a run of fast calls little, and it must finish."""
    flow(tmp_path)
    timed_run(tmp_path, 5)  # warm: imports compiled, database made
    alone = timed_run(tmp_path, 150)
    print(f"150-item run: {alone:.1f} s alone")
    with ui_server(tmp_path) as url:
        stop_polling = threading.Event()
        seen: list[str] = []

        def poll() -> None:
            while not stop_polling.is_set():
                newest = get_json(url + "/api/runs")[0]
                seen.append(newest["status"])
                get(f"{url}/api/runs/{newest['run_id']}/graph.svg")
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            watched = timed_run(tmp_path, 150)
        finally:
            stop_polling.set()
            poller.join(30)
    print(f"150-item run: {watched:.1f} s with the ui polled {len(seen)} times")
    assert "running" in seen  # it read the run while it was being written
    assert watched < alone * 1.6 + 1.5, (alone, watched)


def test_without_its_web_framework_it_says_how_to_install_it(tmp_path):
    hide = ("import sys; sys.modules['starlette'] = None; sys.argv = ['agentflow', 'ui']; "
            "from agentflow.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, env=base_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "pip install starlette uvicorn" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_before_the_first_run_the_list_is_empty_then_shows_it(tmp_path):
    with ui_server(tmp_path) as url:
        assert get_json(url + "/api/runs") == []
        run_id = finished_run(tmp_path)
        # the page reads each view at most once a second: the run shows at a later poll
        wait_until(lambda: [r["run_id"] for r in get_json(url + "/api/runs")] == [run_id], timeout=10,
                   what="the new run in the list")


def test_a_run_that_stored_no_plan_is_drawn_from_its_nodes(tmp_path):
    """Runs recorded before runs stored their plan: the boxes are its nodes, without edges."""
    run_id = finished_run(tmp_path)
    with duckdb.connect(str(tmp_path / DB)) as con:
        assert con.execute("DELETE FROM meta WHERE key LIKE 'plan:%'").fetchone() == (1,)
    with ui_server(tmp_path) as url:
        svg = get(f"{url}/api/runs/{run_id}/graph.svg")[2]
        node = get_json(f"{url}/api/runs/{run_id}/node?id=main/drafts[0]/text")
    assert {"main/drafts", FAN_OUT, "main/drafts[*]/held", "main/return@1"} == box_ids(svg)
    assert "[3] 3 succeeded" in svg and 'class="edge"' not in svg
    assert node["prompt"] == {"filled": True, "prompt": "Write one line about owls."} and node["messages"]  # journaled


def test_a_port_in_use_is_exit_2_saying_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ok(af(tmp_path, "ui", "--port", str(port)), 2)
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_it_with_their_exit_codes(tmp_path, signum, code):
    proc = af_start(tmp_path, "ui", "--port", "0")
    try:
        wait_until(lambda: "http://127.0.0.1:" in (tmp_path / proc.err_file.name).read_text(), what="it to serve")
        proc.send_signal(signum)
        assert proc.wait(20) == code
        assert "Traceback" not in outputs(proc)[1]
    finally:
        stop(proc)


def test_a_db_path_that_is_a_directory_is_exit_2(tmp_path):
    result = ok(af(tmp_path, "ui", "--db", str(tmp_path)), 2)
    assert "--db" in result.stderr and "give the path of a file" in result.stderr


def answer_turns(cwd: Path) -> list[tuple]:
    """The journal steps of the approval node: its question, then any answer with who gave it."""
    with duckdb.connect(str(cwd / DB), read_only=True) as con:
        return con.execute("SELECT kind, payload->>'by', payload->>'value' FROM _turns "
                           "WHERE node_id = 'main/decision' ORDER BY seq").fetchall()


def test_a_waiting_node_is_answered_from_the_page_as_agentflow_answer_checks_it(tmp_path):
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    decision = f"/api/runs/{run_id}/node?id=main/decision"
    with ui_server(tmp_path) as url:
        question = get_json(url + decision)["question"]
        assert question["type"] == '"approve" | "revise"' and question["returns"] == {"literal": ["approve", "revise"]}
        assert "Publish this announcement" in question["prompt"] and question["skeleton"] == "approve"
        assert get_json(f"{url}/api/runs/{run_id}/node?id=main/text")["question"] is None

        code, body = post_answer(url, run_id, {"node": "main/decision", "value": "maybe", "by": "alice"})
        assert code == 422 and body["error"].startswith('the answer does not fit "approve" | "revise": '), body
        assert [kind for kind, *_ in answer_turns(tmp_path)] == ["question"]  # nothing stored

        code, body = post_answer(url, run_id, {"node": "main/decision", "value": "approve", "by": "alice"})
        assert code == 200, body
        assert body == {"node": "main/decision", "value": "approve", "delivered": False,
                        "message": f"answered main/decision of run {run_id}; "
                                   f"continue with `agentflow run FILE --resume {run_id}`"}
        assert answer_turns(tmp_path)[-1] == ("answer", "alice", "approve")
        wait_until(lambda: get_json(url + decision)["status"] == "succeeded", what="the page to see the answer")

        resumed = ok(af(tmp_path, "run", "approval.agentflow", "--resume", run_id))
        assert result_json(resumed)["decision"] == "approve"
        wait_until(lambda: get_json(f"{url}/api/runs/{run_id}")["run"]["status"] == "succeeded",
                   what="the page to see the run finish")


def test_an_unknown_or_answered_node_is_409_and_a_malformed_post_400(tmp_path):
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    with ui_server(tmp_path) as url:
        assert post_answer(url, run_id, {"node": "main/decision", "value": "revise"})[0] == 200
        for run, node, said in [(run_id, "main/decision", "is not waiting for an answer (it is succeeded)"),
                                (run_id, "main/zz", f"run {run_id} has no node main/zz"),
                                ("nope", "main/decision", "there is no run nope")]:
            code, body = post_answer(url, run, {"node": node, "value": "approve"})
            assert code == 409 and said in body["error"], (code, body)
        code, body = post_answer(url, run_id, {"node": "main/decision", "value": ["approve"]})
        assert code == 400 and '"value": TEXT' in body["error"]
    assert answer_turns(tmp_path)[-1][:2] == ("answer", getpass.getuser())  # who, when the page does not say


def test_an_answer_from_another_site_is_refused_and_nothing_stored(tmp_path):
    """A page of another site open in the same browser must not answer for the person: a
    cross-origin POST, one without Origin, and one through a name that resolves here (DNS
    rebinding) are all 403."""
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    answer = {"node": "main/decision", "value": "approve"}
    with ui_server(tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        for origin, host in [("http://evil.example", None), (None, None),
                             (f"http://evil.example:{port}", f"evil.example:{port}")]:
            code, body = post_answer(url, run_id, answer, origin=origin, host=host)
            assert code == 403 and body["error"].startswith("refused: "), (origin, host, code, body)
        assert get_json(f"{url}/api/runs/{run_id}/node?id=main/decision")["status"] == "waiting"
    assert [kind for kind, *_ in answer_turns(tmp_path)] == ["question"]


def test_an_answer_while_another_run_writes_is_503_saying_so_and_the_run_is_not_disturbed(tmp_path):
    """The page holds the database only for the moment of a read, and an answer opens it for
    writing only then: while another run writes, the answer waits its turn (503, one line,
    nothing stored) and that run goes on undisturbed."""
    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    proc, held = start_held_run(tmp_path)  # the same database, its writer held busy
    try:
        with ui_server(tmp_path) as url:
            code, body = post_answer(url, run_id, {"node": "main/decision", "value": "approve"})
            assert code == 503 and "in use by another agentflow run" in body["error"], (code, body)
            assert [kind for kind, *_ in answer_turns(tmp_path)] == ["question"]
            (tmp_path / "go").touch()
            assert proc.wait(60) == 0, outputs(proc)
            assert post_answer(url, run_id, {"node": "main/decision", "value": "approve"})[0] == 200
            assert get_json(f"{url}/api/runs/{held}")["run"]["status"] == "succeeded"
    finally:
        stop(proc)
    assert result_json(ok(af(tmp_path, "run", "approval.agentflow", "--resume", run_id)))["decision"] == "approve"
