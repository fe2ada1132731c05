"""Tests of the model clients: the scripted model, and litellm against our own OpenAI server."""
from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

from agentflow.runtime.models import (
    LiteLLMModelClient,
    ModelError,
    ModelRequest,
    ModelResponse,
    ScriptedModelClient,
    ToolCall,
    TransientModelError,
    client_for,
)

from openai_server import OpenAIServer

HERE = Path(__file__).parent
KEY_ENV = "AGENTFLOW_TEST_DUMMY_KEY"
SECRET = "sk-test-Zq8vN3-do-not-leak"


def make_request(**overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = dict(
        model="scripted",
        messages=(
            {"role": "system", "content": "You review Python modules strictly."},
            {"role": "user", "content": "Review mod_a.py. The coder reported: done"},
        ),
        tools=(),
        output_schema=None,
        output_name="Review",
        node_id="main/reviews[0]/attempt#1/review",
        task="reviewer.review_module",
        turn=1,
        attempt=1,
    )
    fields.update(overrides)
    return ModelRequest(**fields)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


class ModuleSpec(BaseModel):
    module_path: str
    description: str = Field(min_length=20, max_length=40)
    public_api: str
    test_path: str


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Rich(BaseModel):
    verdict: Literal["PASS", "NEEDS_FIXES"]
    modules: list[ModuleSpec]
    score: int = Field(ge=3, le=7)
    ratio: float = Field(gt=0, lt=1)
    ok: bool
    note: Optional[str]
    maybe_module: ModuleSpec | None
    extra: Any
    counts: dict[str, int]
    tags: list[Literal["a", "b", "c"]] = Field(min_length=2, max_length=2)
    fixed: Literal["v1"]
    tree: Node
    number_or_text: int | str


REVIEW_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["PASS", "NEEDS_FIXES"], "type": "string"},
        "feedback": {"type": "string"},
    },
    "required": ["verdict", "feedback"],
}


# --------------------------------------------------------------------------------------------
# Scripted model: synthesis
# --------------------------------------------------------------------------------------------


def test_scripted_is_deterministic_and_request_sensitive() -> None:
    client = ScriptedModelClient()
    schema = Rich.model_json_schema()
    first = run(client.complete(make_request(output_schema=schema)))
    again = run(ScriptedModelClient().complete(make_request(output_schema=schema)))
    other_node = run(client.complete(make_request(output_schema=schema, node_id="main/reviews[1]/attempt#1/review")))
    other_msgs = run(client.complete(make_request(output_schema=schema, messages=({"role": "user", "content": "x"},))))
    assert first.content == again.content
    assert first.content != other_node.content
    assert first.content != other_msgs.content
    # turn and attempt do not change the seed: a re-asked identical request gets the same answer
    assert run(client.complete(make_request(output_schema=schema, attempt=2, turn=3))).content == first.content


@pytest.mark.parametrize("model", [Rich, ModuleSpec, Node])
def test_scripted_answers_fit_the_schema(model: type[BaseModel]) -> None:
    client = ScriptedModelClient()
    schema = model.model_json_schema()
    for i in range(40):
        response = run(client.complete(make_request(output_schema=schema, node_id=f"main/x[{i}]")))
        value = json.loads(response.content)
        jsonschema.validate(value, schema)
        model.model_validate(value)  # pydantic agrees with jsonschema
        assert response.tool_calls == ()


def test_scripted_strings_are_readable_and_arrays_small() -> None:
    response = run(ScriptedModelClient().complete(make_request(output_schema=Rich.model_json_schema())))
    value = json.loads(response.content)
    assert value["modules"][0]["module_path"].startswith("module_path ")
    assert 1 <= len(value["modules"]) <= 3
    assert value["fixed"] == "v1"


def test_scripted_enum_covers_every_value() -> None:
    client = ScriptedModelClient()
    seen = {
        json.loads(run(client.complete(make_request(output_schema=REVIEW_SCHEMA, node_id=f"n{i}"))).content)["verdict"]
        for i in range(30)
    }
    assert seen == {"PASS", "NEEDS_FIXES"}


@pytest.mark.parametrize(
    "schema, check",
    [
        ({}, lambda v: v is not None),
        ({"type": "string"}, lambda v: isinstance(v, str) and v),
        ({"type": "integer", "minimum": 5, "maximum": 5}, lambda v: v == 5),
        ({"type": "number"}, lambda v: isinstance(v, (int, float))),
        ({"type": "boolean"}, lambda v: isinstance(v, bool)),
        ({"type": "array", "items": {"type": "integer"}}, lambda v: 1 <= len(v) <= 3),
        ({"const": {"k": [1]}}, lambda v: v == {"k": [1]}),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, lambda v: isinstance(v, int)),
        ({"oneOf": [{"type": "null"}]}, lambda v: v is None),
        ({"type": ["null", "string"]}, lambda v: isinstance(v, str)),
        ({"$defs": {"A": {"type": "boolean"}}, "$ref": "#/$defs/A"}, lambda v: isinstance(v, bool)),
        ({"type": "string", "format": "date-time"}, lambda v: v.startswith("2024-")),
    ],
)
def test_scripted_schema_kinds(schema: dict, check: Any) -> None:
    value = json.loads(run(ScriptedModelClient().complete(make_request(output_schema=schema))).content)
    jsonschema.validate(value, schema)
    assert check(value), value


def test_scripted_plain_answer_tokens_and_no_tools() -> None:
    tool = {"type": "function", "function": {"name": "run_tests", "description": "", "parameters": {"type": "object"}}}
    response = run(ScriptedModelClient().complete(make_request(tools=(tool,))))
    assert isinstance(response, ModelResponse)
    assert response.content and response.content.startswith("scripted answer to reviewer.review_module")
    assert response.tool_calls == ()
    assert response.prompt_tokens > 5 and response.completion_tokens > 0
    assert response.cost_usd == 0.0 and response.model == "scripted"


# --------------------------------------------------------------------------------------------
# Scripted model: scripts
# --------------------------------------------------------------------------------------------


def write_script(tmp_path: Path, rules: Any, name: str = "script.json") -> str:
    (tmp_path / name).write_text(json.dumps(rules if isinstance(rules, dict) else {"rules": rules}))
    return f"scripted:{name}"


def scripted(tmp_path: Path, model: str, **overrides: Any) -> ModelResponse:
    return run(ScriptedModelClient().complete(make_request(model=model, script_dir=str(tmp_path), **overrides)))


def test_script_first_matching_rule_wins(tmp_path: Path) -> None:
    model = write_script(tmp_path, [
        {"node": "main/reviews[0]/*", "turn": 2, "content": "zero, turn two"},
        {"node": "main/reviews[0]/*", "content": {"verdict": "PASS", "feedback": "ok"}},
        {"task": "reviewer.*", "content": "any reviewer"},
        {"contains": "MARKER", "content": "marked"},
    ])
    assert scripted(tmp_path, model, turn=2).content == "zero, turn two"
    assert json.loads(scripted(tmp_path, model).content) == {"verdict": "PASS", "feedback": "ok"}
    assert scripted(tmp_path, model, node_id="main/reviews[1]/attempt#1/review").content == "any reviewer"
    elsewhere = dict(node_id="main/impl", task="coder.implement")
    assert scripted(tmp_path, model, node_id="main/reviewsX0]/attempt#1/review").content == "any reviewer"
    marked = scripted(tmp_path, model, messages=({"role": "user", "content": "a MARKER b"},), **elsewhere)
    assert marked.content == "marked"
    # no match: synthesis, same as the unscripted model with this model id
    fallback = scripted(tmp_path, model, output_schema=REVIEW_SCHEMA, **elsewhere)
    jsonschema.validate(json.loads(fallback.content), REVIEW_SCHEMA)


def test_script_attempt_tool_calls_echo_raw(tmp_path: Path) -> None:
    model = write_script(tmp_path, [
        {"attempt": 2, "raw": "not json {"},
        {"turn": 1, "tool_calls": [
            {"name": "write_file", "arguments": {"path": "a.py", "content": "x = 1"}},
            {"name": "run_tests", "arguments": {"test_path": "t.py"}},
        ]},
        {"turn": 2, "echo": "last"},
    ])
    first = scripted(tmp_path, model)
    assert first.content is None
    assert first.tool_calls == (
        ToolCall(id="call_1_1", name="write_file", arguments={"path": "a.py", "content": "x = 1"}),
        ToolCall(id="call_1_2", name="run_tests", arguments={"test_path": "t.py"}),
    )
    tool_error = {"role": "tool", "tool_call_id": "call_1_2", "content": "tool error: exit status 1"}
    echoed = scripted(tmp_path, model, turn=2, messages=(*make_request().messages, tool_error))
    assert echoed.content == "tool error: exit status 1"
    assert scripted(tmp_path, model, attempt=2).content == "not json {"


@pytest.mark.parametrize("kind, transient", [("rate_limit", True), ("server", True), ("timeout", True), ("fatal", False)])
def test_script_errors(tmp_path: Path, kind: str, transient: bool) -> None:
    model = write_script(tmp_path, [{"error": kind, "message": "boom"}])
    with pytest.raises(ModelError, match="boom") as info:
        scripted(tmp_path, model)
    assert isinstance(info.value, TransientModelError) is transient


def test_script_times_limits_a_rule(tmp_path: Path) -> None:
    model = write_script(tmp_path, [{"error": "rate_limit", "times": 1}, {"content": "fine"}])
    client = ScriptedModelClient()
    request = make_request(model=model, script_dir=str(tmp_path))
    with pytest.raises(TransientModelError):
        run(client.complete(request))
    assert run(client.complete(request)).content == "fine"


def test_script_absolute_path_and_client_for(tmp_path: Path) -> None:
    write_script(tmp_path, [{"content": "abs"}])
    model = f"scripted:{tmp_path / 'script.json'}"
    assert client_for(model) is client_for("scripted")
    assert isinstance(client_for("scripted"), ScriptedModelClient)
    assert isinstance(client_for("openai/gpt-4o-mini"), LiteLLMModelClient)
    assert client_for("openai/gpt-4o-mini") is client_for("anthropic/claude-3-5-haiku-latest")
    assert run(client_for(model).complete(make_request(model=model))).content == "abs"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not valid JSON"),
        ('{"answers": []}', "expected an object"),
        ('{"rules": [{"node": "x"}]}', "exactly one reply"),
        ('{"rules": [{"content": "a", "raw": "b"}]}', "exactly one reply"),
        ('{"rules": [{"contentt": "a"}]}', "unknown key"),
        ('{"rules": [{"error": "oops"}]}', "'error' must be one of"),
        ('{"rules": [{"turn": "1", "content": "a"}]}', "'turn' must be a positive integer"),
        ('{"rules": [{"tool_calls": [{"arguments": {}}]}]}', "needs a 'name'"),
        ('{"rules": [{"echo": "first"}]}', "'echo' must be"),
    ],
)
def test_malformed_scripts_name_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ModelError) as info:
        scripted(tmp_path, "scripted:bad.json")
    assert not isinstance(info.value, TransientModelError)
    assert str(tmp_path / "bad.json") in str(info.value)
    assert problem in str(info.value)


def test_missing_script(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        scripted(tmp_path, "scripted:nope.json")


# --------------------------------------------------------------------------------------------
# The litellm client against our OpenAI-compatible server
# --------------------------------------------------------------------------------------------


def test_importing_models_does_not_import_litellm() -> None:
    code = "import sys, agentflow.runtime.models as m; m.client_for('openai/x'); print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_loading_litellm_leaves_the_gc_on_and_exit_quiet() -> None:
    # load_litellm pauses the GC for the import and freezes every object after it. Here litellm
    # was already imported by the program, and DuckDB is loaded, as in a run: its bindings
    # report at exit the objects of theirs still alive, as frozen ones would be.
    code = ("import os; os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] = 'True'; "
            "import gc, duckdb, litellm, agentflow.runtime.models as m; con = duckdb.connect(); "
            "con.execute('select 1').fetchall(); m.load_litellm(); print(gc.isenabled(), gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True True" and out.stderr == ""


@pytest.fixture(scope="module")
def server() -> Any:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def srv(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    server.reset()
    monkeypatch.setenv(KEY_ENV, SECRET)
    return server


def remote(srv: OpenAIServer, **overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = dict(model="openai/gpt-4o-mini", api_base=srv.base_url, api_key_env=KEY_ENV)
    fields.update(overrides)
    return make_request(**fields)


def test_litellm_plain_answer(srv: OpenAIServer) -> None:
    response = run(LiteLLMModelClient().complete(remote(srv, temperature=0.0, max_tokens=50)))
    assert response.content == "echo: Review mod_a.py. The coder reported: done"
    assert response.tool_calls == ()
    assert srv.chat_count == 1
    logged = srv.requests[0]
    assert logged["api_key"] == SECRET
    assert logged["model"] == "gpt-4o-mini"
    assert "tools" not in logged["body"] and "response_format" not in logged["body"]
    assert logged["body"]["temperature"] == 0.0 and logged["body"]["max_tokens"] == 50
    assert response.prompt_tokens > 0 and response.completion_tokens > 0
    assert response.latency_ms > 0 and response.model == "openai/gpt-4o-mini"
    import litellm  # loaded by the call above, with its bundled price map

    prices = litellm.cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=response.prompt_tokens,
                                    completion_tokens=response.completion_tokens)
    assert response.cost_usd == pytest.approx(sum(prices)) and response.cost_usd > 0


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/my-local-llama"])
def test_litellm_structured_answer(srv: OpenAIServer, model: str) -> None:
    # an openai/ model at an api_base gets response_format even when litellm does not know it
    schema = Rich.model_json_schema()
    response = run(LiteLLMModelClient().complete(remote(srv, model=model, output_schema=schema, output_name="Rich")))
    if model == "openai/my-local-llama":
        assert response.cost_usd is None  # not in litellm's price map
    fmt = srv.requests[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Rich" and fmt["json_schema"]["schema"] == schema
    jsonschema.validate(json.loads(response.content), schema)


def test_litellm_schema_as_instruction_when_unsupported(srv: OpenAIServer) -> None:
    # hosted_vllm/* is OpenAI-compatible but litellm does not claim response-schema support
    request = remote(srv, model="hosted_vllm/my-local-model", output_schema=REVIEW_SCHEMA)
    run(LiteLLMModelClient().complete(request))
    body = srv.requests[0]["body"]
    assert "response_format" not in body
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You review Python modules strictly.")
    assert '"NEEDS_FIXES"' in system["content"] and "JSON" in system["content"]


def test_litellm_tool_calls(srv: OpenAIServer) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a file inside the workspace.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    }
    srv.enqueue({"tool_calls": [{"id": "call_x", "name": "write_file", "arguments": {"path": "a.py", "content": "x"}}]})
    srv.enqueue({"tool_calls": "auto"})
    client = LiteLLMModelClient()
    first = run(client.complete(remote(srv, tools=(tool,))))
    assert first.content is None
    assert first.tool_calls == (ToolCall(id="call_x", name="write_file", arguments={"path": "a.py", "content": "x"}),)
    assert srv.requests[0]["tools"] == [tool]
    second = run(client.complete(remote(srv, tools=(tool,))))
    assert [c.name for c in second.tool_calls] == ["write_file"]
    assert set(second.tool_calls[0].arguments) == {"path", "content"}

    # the next turn carries the call and its result; arguments given as a dict go out as JSON text
    history = (
        *make_request().messages,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "write_file", "arguments": {"path": "a.py", "content": "x"}}},
        ]},
        {"role": "tool", "tool_call_id": "call_x", "content": "wrote a.py"},
    )
    third = run(client.complete(remote(srv, tools=(tool,), messages=history, turn=2)))
    assert third.content is not None and third.tool_calls == ()
    sent = srv.requests[2]["messages"]
    assert json.loads(sent[2]["tool_calls"][0]["function"]["arguments"]) == {"path": "a.py", "content": "x"}
    assert sent[3] == {"role": "tool", "tool_call_id": "call_x", "content": "wrote a.py"}


def test_litellm_malformed_tool_arguments_are_transient(srv: OpenAIServer) -> None:
    srv.enqueue({"tool_calls": [{"name": "f", "arguments": "{not json"}]})
    with pytest.raises(TransientModelError, match="not a JSON object"):
        run(LiteLLMModelClient().complete(remote(srv)))


@pytest.mark.parametrize(
    "behaviour",
    [{"status": 429, "retry_after": 2}, {"status": 500}, {"status": 503}, {"invalid_json": True}, {"drop": True}],
)
def test_litellm_transient_failures(srv: OpenAIServer, behaviour: dict) -> None:
    srv.enqueue(behaviour)
    with pytest.raises(TransientModelError) as info:
        run(LiteLLMModelClient().complete(remote(srv)))
    assert srv.chat_count == 1, "the client must not retry by itself"
    if behaviour.get("status") == 429:
        assert info.value.retry_after == 2.0
        assert "rate limited" in str(info.value)


@pytest.mark.parametrize("retry_after, low, high", [
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0),  # a date in the past: retry now
    ("in-the-future", None, None),  # unreadable: the default backoff
    ("3600", 60.0, 60.0),  # an hour: cut to the documented maximum
    ("FUTURE", 25.0, 30.0),  # an HTTP date 30 s ahead
])
def test_litellm_retry_after_dates_and_maximum(srv: OpenAIServer, retry_after: str, low, high) -> None:
    if retry_after == "FUTURE":
        retry_after = email.utils.formatdate(time.time() + 30, usegmt=True)
    srv.enqueue({"status": 429, "retry_after": retry_after})
    with pytest.raises(TransientModelError) as info:
        run(LiteLLMModelClient().complete(remote(srv)))
    if low is None:
        assert info.value.retry_after is None
    else:
        assert low <= info.value.retry_after <= high


def test_litellm_timeout_is_transient(srv: OpenAIServer) -> None:
    srv.enqueue({"latency_ms": 3000})
    started = time.perf_counter()
    with pytest.raises(TransientModelError, match="timed out"):
        run(LiteLLMModelClient().complete(remote(srv, timeout_s=0.3)))
    assert time.perf_counter() - started < 2.5


@pytest.mark.parametrize("status, words", [(401, "authentication failed"), (403, "authentication failed"), (400, "rejected"), (404, "not found")])
def test_litellm_permanent_failures_never_show_the_key(srv: OpenAIServer, status: int, words: str) -> None:
    srv.enqueue({"status": status, "message": "Incorrect API key provided: {api_key}"})
    with pytest.raises(ModelError) as info:
        run(LiteLLMModelClient().complete(remote(srv)))
    error = info.value
    assert not isinstance(error, TransientModelError)
    assert words in str(error)
    assert srv.requests[0]["api_key"] == SECRET  # the server did see (and echo) it
    for text in (str(error), repr(error), repr(error.args)):
        assert SECRET not in text
    assert srv.chat_count == 1


def test_litellm_missing_key_variable(srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ModelError, match=f"^model openai/gpt-4o-mini \\(role reviewer\\) needs {KEY_ENV}; set it in the environment$"):
        run(LiteLLMModelClient().complete(remote(srv)))
    assert srv.chat_count == 0


def test_missing_package_at_call_time_is_permanent_and_named(srv: OpenAIServer) -> None:
    # litellm 1.106 imports `mcp` whenever tools are sent: were it missing, say so, don't retry.
    import litellm

    from agentflow.runtime.models import litellm_client

    wrapped = litellm.APIConnectionError(message="OpenAIException - No module named 'mcp'", llm_provider="openai", model="gpt-4o-mini")
    error = litellm_client.classify(wrapped, remote(srv), litellm)
    assert type(error) is ModelError and "package 'mcp'" in str(error)


def test_litellm_counts_once_per_call_over_many_calls(srv: OpenAIServer) -> None:
    client = LiteLLMModelClient()

    async def many() -> list[ModelResponse]:
        requests = [remote(srv, messages=({"role": "user", "content": f"q{i}"},)) for i in range(5)]
        return await asyncio.gather(*(client.complete(r) for r in requests))

    responses = run(many())
    assert sorted(r.content for r in responses) == [f"echo: q{i}" for i in range(5)]
    assert srv.chat_count == 5
    assert get_json(srv, "/stats")["chat_requests"] == 5


def test_litellm_over_keep_alive_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    client = LiteLLMModelClient()
    with OpenAIServer(keep_alive=True) as srv:
        srv.enqueue({}, {"status": 500}, {})

        async def calls() -> list[str]:
            out = []
            for _ in range(3):  # one after another: each reuses the pooled connection
                try:
                    out.append((await client.complete(remote(srv))).content or "")
                except TransientModelError as err:
                    out.append(type(err).__name__)
            return out

        echo = "echo: Review mod_a.py. The coder reported: done"
        assert run(calls()) == [echo, "TransientModelError", echo]
        assert srv.chat_count == 3


# --------------------------------------------------------------------------------------------
# The server itself: raw HTTP, streaming, control API, subprocess mode
# --------------------------------------------------------------------------------------------


def post(port: int, path: str, body: Any, raw: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=raw if raw is not None else json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def get_json(srv: OpenAIServer, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def sse_events(data: bytes) -> list[Any]:
    events = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_server_streaming(srv: OpenAIServer) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "stream me please"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, data = post(srv.port, "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert text == "echo: stream me please"
    assert events[-2]["usage"]["completion_tokens"] > 0
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "stop"

    srv.enqueue({"tool_calls": [{"name": "f", "arguments": {"a": 1}}]})
    events = sse_events(post(srv.port, "/v1/chat/completions", body)[2])
    calls = [d for e in events[:-1] if e["choices"] for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_server_control_api_and_rules(srv: OpenAIServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello FAIL-ONCE"}]}
    status, _, _ = post(srv.port, "/control", {"rules": [{"contains": "FAIL-ONCE", "behaviour": {"status": 500}, "times": 1}],
                                               "enqueue": [{"content": "queued"}]})
    assert status == 200
    assert post(srv.port, "/v1/chat/completions", body)[0] == 500  # the rule wins over the queue
    status, _, data = post(srv.port, "/v1/chat/completions", body)
    assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "queued"
    srv.enqueue({"status": 429, "retry_after": 7})
    status, headers, _ = post(srv.port, "/v1/chat/completions", body)
    assert status == 429 and headers["Retry-After"] == "7"
    assert post(srv.port, "/v1/chat/completions", None, raw=b"{broken")[0] == 400
    stats = get_json(srv, "/stats")
    assert stats["chat_requests"] == 3 and [e["n"] for e in stats["log"]] == [1, 2, 3]
    assert stats["first_chat_at"] <= stats["last_answer_at"] <= time.time()
    post(srv.port, "/control", {"reset": True})
    assert get_json(srv, "/stats") == {"chat_requests": 0, "log": [], "first_chat_at": None, "last_answer_at": None}


def test_server_keep_alive_reuses_the_connection_and_stop_closes_it() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with OpenAIServer(keep_alive=True) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        sockets = []
        for _ in range(2):
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["choices"]
            sockets.append(conn.sock)
        assert sockets[0] is not None and sockets[0] is sockets[1]  # HTTP/1.0 would close it after each
    sockets[0].settimeout(5)
    assert sockets[0].recv(1) == b""  # stop() ended the idle connection, not the client's timeout
    conn.close()


def test_server_caps_concurrent_chat_requests() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with OpenAIServer(latency_ms=1000, max_concurrent=1) as srv:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, srv.port, "/v1/chat/completions", body)
            deadline = time.monotonic() + 10
            while srv.chat_count == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the first request holds the only slot
            status, _, data = post(srv.port, "/v1/chat/completions", body)
            assert status == 503 and "capacity" in json.loads(data)["error"]["message"]
            assert first.result()[0] == 200
        assert srv.chat_count == 1  # the refused request is not counted


@pytest.mark.parametrize("flags", [[], ["--keep-alive", "--max-concurrent", "8"]])
def test_server_as_subprocess(flags: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE.parent / "openai_server.py"), "--port", "0", "--latency-ms", "50", *flags],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(proc.stdout.readline())
        started = time.perf_counter()
        status, _, data = post(port, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and time.perf_counter() - started >= 0.05
        assert json.loads(data)["usage"]["prompt_tokens"] >= 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        proc.stdout.close()
