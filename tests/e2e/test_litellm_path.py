"""The litellm path end to end, against our OpenAI-protocol server: structured output, tool
calls, transient errors retried, invalid answers repaired, exhausted retries failing the run
(exit 3) while independent nodes finish, `--resume` re-running only the failed node, and the
API key never written anywhere.

One failing run and its resume are shared by the tests of this module (litellm costs ~5 s to
import in every process)."""
from __future__ import annotations

import json

import pytest

from runtime_support import DB, SECRET, OpenAIServer, af, assert_no_secret, llm_defaults, ok, ran, \
    requests_with, result_json, reused, runs, show, write

BODY = """
type Verdict {
  verdict: "OK" | "BAD"
  reason: str
}

tool shout(text: str) -> str {
  python = "tools:shout"
  description = "Upper-cases a text."
}

role analyst {
  replicas = 4
  task classify(text: str) -> Verdict { prompt = "CLASSIFY {text}" }
}

role worker {
  tools = [shout]
  task use_tool(text: str) -> str { prompt = "USE THE TOOL on {text}" }
}

role flaky {
  replicas = 4
  task ask(text: str) -> str { prompt = "ASK {text}" }
}

role doomed {
  task ask(text: str) -> str { prompt = "DOOMED {text}" }
}

choreography main() -> json {
  structured = analyst.classify("plain")
  repaired = analyst.classify("REPAIR ME")
  tooled = worker.use_tool("hi")
  r429 = flaky.ask("RATE LIMITED")
  r500 = flaky.ask("SERVER ERROR")
  boom = doomed.ask("EXHAUST")
  downstream = flaky.ask(boom)
  return {structured: structured, repaired: repaired, tooled: tooled, r429: r429, r500: r500,
          downstream: downstream}
}
"""
INDEPENDENT = {"main/structured", "main/repaired", "main/tooled", "main/r429", "main/r500"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("litellm")
    with OpenAIServer() as server:
        write(tmp / "tools.py", "def shout(text):\n    return text.upper() + '!'\n")
        write(tmp / "flow.agentflow", llm_defaults(server, retries=2) + BODY)
        server.add_rule("REPAIR ME", {"content": json.dumps({"verdict": "MAYBE", "reason": "unsure"})}, times=1)
        server.add_rule("USE THE TOOL", {"tool_calls": [{"id": "call_7", "name": "shout",
                                                         "arguments": {"text": "hi"}}]}, times=1)
        server.add_rule("RATE LIMITED", {"status": 429, "message": "slow down"}, times=2)
        server.add_rule("SERVER ERROR", {"status": 500, "message": "oops"}, times=1)
        # every attempt of the doomed node fails (1 + retries), and the error quotes the key
        server.add_rule("EXHAUST", {"status": 500, "message": "upstream exploded for key {api_key}"}, times=3)
        failed = af(tmp, "run", "flow.agentflow")
        failed_requests = server.requests
        failed_run = runs(tmp)[0]
        failed_nodes = show(tmp, failed_run["run_id"], cli=True)
        failed_show_text = af(tmp, "show", failed_run["run_id"]).stdout
        resumed = af(tmp, "run", "flow.agentflow", "--resume")
        resumed_requests = server.requests[len(failed_requests):]
        resumed_run = runs(tmp)[0]
        resumed_nodes = show(tmp, resumed_run["run_id"])
        yield dict(tmp=tmp, server=server, failed=failed, failed_requests=failed_requests,
                   failed_run=failed_run, failed_nodes=failed_nodes, failed_show_text=failed_show_text,
                   resumed=resumed, resumed_requests=resumed_requests, resumed_run=resumed_run,
                   resumed_nodes=resumed_nodes)


def test_exhausted_retries_fail_the_run_and_show_names_node_role_error(scenario):
    failed = ok(scenario["failed"], 3)
    assert "main/boom" in failed.stderr and "doomed" in failed.stderr
    assert failed.stdout == ""
    assert scenario["failed_run"]["status"] == "failed"
    boom = scenario["failed_nodes"]["main/boom"]
    assert boom["status"] == "failed" and boom["role"] == "doomed" and boom["attempts"] == 3
    assert "HTTP 500" in boom["error"] and "upstream exploded" in boom["error"]
    text = scenario["failed_show_text"]
    assert "main/boom" in text and "doomed" in text and "failed" in text and "HTTP 500" in text
    assert len(requests_with(scenario["server"], "DOOMED EXHAUST")) >= 3


def test_independent_nodes_finish_and_nothing_downstream_starts(scenario):
    nodes = scenario["failed_nodes"]
    assert {n for n in INDEPENDENT if nodes[n]["status"] == "succeeded"} == INDEPENDENT
    assert "main/downstream" not in nodes or nodes["main/downstream"]["status"] != "succeeded"
    assert not [r for r in scenario["failed_requests"] if "ASK " in r["messages"][-1]["content"]
                and "echo:" in r["messages"][-1]["content"]]


def test_structured_output_uses_json_schema(scenario):
    (request,) = [r for r in scenario["failed_requests"] if r["messages"][-1]["content"] == "CLASSIFY plain"]
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert set(schema["properties"]) == {"verdict", "reason"}
    assert schema["properties"]["verdict"].get("enum") == ["OK", "BAD"] or "OK" in json.dumps(schema)


def test_invalid_answer_is_repaired_with_the_validation_error(scenario):
    requests = [r for r in scenario["failed_requests"]
                if any(m.get("content") == "CLASSIFY REPAIR ME" for m in r["messages"])]
    assert len(requests) == 2
    repair = requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": json.dumps({"verdict": "MAYBE", "reason": "unsure"})}
    assert repair[-1]["role"] == "user"
    assert "not valid" in repair[-1]["content"] and "verdict" in repair[-1]["content"]
    assert "'OK'" in repair[-1]["content"]  # the validation error itself, not a generic complaint
    value = result_json(scenario["resumed"])["repaired"]
    assert value["verdict"] in ("OK", "BAD")


def test_tool_call_executed_and_result_sent_back(scenario):
    requests = [r for r in scenario["failed_requests"]
                if any(m.get("content") == "USE THE TOOL on hi" for m in r["messages"])]
    assert len(requests) == 2
    assert requests[0]["tools"][0]["function"]["name"] == "shout"
    messages = requests[1]["messages"]
    assert messages[-2]["role"] == "assistant" and messages[-2]["tool_calls"][0]["id"] == "call_7"
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_7", "name": "shout", "content": "HI!"}


def test_transient_errors_retried_and_attempts_recorded(scenario):
    nodes = scenario["failed_nodes"]
    assert nodes["main/r429"]["attempts"] == 3
    assert nodes["main/r500"]["attempts"] == 2
    assert nodes["main/structured"]["attempts"] == 1
    assert len(requests_with(scenario["server"], "ASK RATE LIMITED")) == 3
    assert len(requests_with(scenario["server"], "ASK SERVER ERROR")) == 2


def test_resume_reruns_only_the_failed_node_and_what_it_blocked(scenario):
    resumed = ok(scenario["resumed"])
    assert scenario["resumed_run"]["run_id"] == scenario["failed_run"]["run_id"]
    assert scenario["resumed_run"]["status"] == "succeeded"
    asked = sorted(r["messages"][-1]["content"] for r in scenario["resumed_requests"])
    assert asked == ["ASK echo: DOOMED EXHAUST", "DOOMED EXHAUST"]
    nodes = scenario["resumed_nodes"]
    assert {"main/boom", "main/downstream"} <= ran(nodes)
    assert INDEPENDENT <= reused(nodes)
    assert result_json(resumed)["downstream"] == "echo: ASK echo: DOOMED EXHAUST"


def test_key_never_stored_or_printed(scenario):
    assert all(r["api_key"] == SECRET for r in scenario["failed_requests"])  # it was really sent
    assert_no_secret(scenario["tmp"] / DB)
    for result in (scenario["failed"], scenario["resumed"]):
        assert_no_secret(result.stdout, result.stderr)
    assert_no_secret(scenario["failed_show_text"], json.dumps(scenario["failed_nodes"]))
