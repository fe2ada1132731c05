"""A small OpenAI-compatible chat-completions server for tests (stdlib only, loopback only).

Use it in-process::

    with OpenAIServer(latency_ms=0) as server:
        server.enqueue({"status": 429, "retry_after": 2})
        ... litellm.acompletion(model="openai/gpt-4o-mini", api_base=server.base_url, ...)
        assert server.chat_count == 1

or as a subprocess: ``python tests/openai_server.py --port 0 --latency-ms 50`` prints the
port it listens on (one line, just the number) and serves until SIGTERM/SIGINT.

By default it speaks HTTP/1.0 (one request per connection, so nothing lingers on stop) and
answers at most ``MAX_CONCURRENT`` chat requests at once (the others get a 503).
``OpenAIServer(keep_alive=True)`` (``--keep-alive``) speaks HTTP/1.1 with persistent
connections, as real providers do; ``stop()`` then closes the connections it holds.
``max_concurrent=N`` (``--max-concurrent N``) raises the cap, e.g. for a load test.

Endpoints
---------
``POST /v1/chat/completions`` (also ``/chat/completions``)
    JSON answer, or server-sent events when the body has ``"stream": true``
    (with a final usage chunk when ``stream_options.include_usage`` is true).
    Default answer: with a ``response_format`` json_schema, a JSON object that fits the schema;
    with ``json_object``, ``{"answer": ...}``; otherwise ``"echo: <last user message>"``.
``GET /stats``
    ``{"chat_requests": N, "log": [...], "first_chat_at": T0, "last_answer_at": T1}``: every
    chat request, with its parsed body, the bearer key it carried, the behaviour it got and
    when it arrived (``at``);
    T0 is when the first chat request arrived and T1 when the last chat answer was sent
    (``time.time()``, null before any), so T1 - T0 is the call phase of a load test.
``POST /control``
    ``{"enqueue": [behaviour, ...]}`` behaviours for the next chat requests, in order;
    ``{"rules": [{"contains": "MARKER", "behaviour": {...}, "times": 1}]}`` appends rules that
    apply to requests whose last user message contains MARKER (``times`` omitted: always);
    ``{"latency_ms": N}`` sets the base latency; ``{"reset": true}`` clears queue, rules,
    counters and log. Keys can be combined; ``reset`` is applied first.
``GET /v1/models``, ``GET /health``

Behaviours (a rule wins over the queue; with neither, the default answer)
------------------------------------------------------------------------
``{"status": 429, "retry_after": 2, "message": "..."}``
    an OpenAI-style error body with that HTTP status (any 4xx/5xx); ``{api_key}`` in the
    message is replaced by the bearer key received (to test that clients redact keys).
``{"invalid_json": true}``    HTTP 200 whose body is not JSON.
``{"drop": true}``            close the connection without answering.
``{"content": "..."}``        answer with exactly this content (e.g. JSON that breaks the schema).
``{"tool_calls": [{"name": "f", "arguments": {...}}]}`` or ``{"tool_calls": "auto"}``
    answer with tool calls (``auto``: the first tool of the request, arguments synthesized
    from its parameter schema).
``{"latency_ms": N}``         extra delay for this request (combinable with any of the above).
"""
from __future__ import annotations

import argparse
import collections
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_LOG = 1000
MAX_QUEUE = 1000
MAX_CONCURRENT = 64
LISTEN_BACKLOG = 256  # socketserver's default of 5 drops the SYNs of a burst of connections (1 s retransmits)
MAX_LATENCY_MS = 60_000


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content)


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def synthesize(schema: Any, name: str = "value", root: Any = None, depth: int = 0) -> Any:
    """A simple value that fits `schema` (objects, arrays, scalars, enum/const, anyOf, $ref)."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return f"{name} text"
    deep = depth > 6  # recursive types: only what is required, empty arrays
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part and isinstance(target, dict) else target
        return synthesize(target, name, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if not (isinstance(o, dict) and o.get("type") == "null")]
            return synthesize((options or schema[key])[0], name, root, depth + 1)
    if schema.get("allOf"):
        return synthesize(schema["allOf"][0], name, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties", {})
        keys = [k for k in props if k in schema.get("required", [])] if deep else list(props)
        return {key: synthesize(props[key], key, root, depth + 1) for key in keys}
    if kind == "array":
        count = schema.get("minItems", 0) if deep else max(1, schema.get("minItems", 1))
        count = min(count, schema.get("maxItems", count))
        return [synthesize(schema.get("items", {}), name, root, depth + 1) for _ in range(count)]
    if kind == "string":
        text = f"{name} text"
        text = text.ljust(schema.get("minLength", 0), "x")
        return text[: schema.get("maxLength", len(text))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is not None and high is not None:
            value = (low + high) / 2
        elif low is not None:
            value = low + 1
        elif high is not None:
            value = high - 1
        else:
            value = 1.5
        if kind == "integer":
            value = int(value) if low is None or int(value) >= low else int(value) + 1
        return value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"{name} text"  # {} means any JSON


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every open connection, waking handlers that wait for a keep-alive request."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client gave up (e.g. its timeout): nothing to report
        super().handle_error(request, client_address)


class OpenAIServer:
    """The server object: start/stop it, steer it, and read what it received."""

    def __init__(
        self, *, port: int = 0, latency_ms: int = 0, max_concurrent: int = MAX_CONCURRENT, keep_alive: bool = False
    ) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.keep_alive = keep_alive
        self._queue: collections.deque[dict] = collections.deque(maxlen=MAX_QUEUE)
        self._rules: list[dict] = []
        self._log: collections.deque[dict] = collections.deque(maxlen=MAX_LOG)
        self._chat_count = 0
        self._first_chat_at: float | None = None
        self._last_answer_at: float | None = None
        self.latency_ms = latency_ms
        self._httpd = _HTTPServer((HOST, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping on latency
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # control -----------------------------------------------------------------------------
    def enqueue(self, *behaviours: dict) -> None:
        with self._lock:
            self._queue.extend(dict(b) for b in behaviours)

    def add_rule(self, contains: str, behaviour: dict, times: int | None = None) -> None:
        with self._lock:
            self._rules.append({"contains": contains, "behaviour": dict(behaviour), "times": times})

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rules.clear()
            self._log.clear()
            self._chat_count = 0
            self._first_chat_at = self._last_answer_at = None

    def control(self, command: dict) -> None:
        """Apply a /control command (see the module docstring)."""
        if command.get("reset"):
            self.reset()
        if "latency_ms" in command:
            self.latency_ms = int(command["latency_ms"])
        self.enqueue(*command.get("enqueue", []))
        for rule in command.get("rules", []):
            self.add_rule(rule["contains"], rule.get("behaviour", {}), rule.get("times"))

    # observation -------------------------------------------------------------------------
    @property
    def chat_count(self) -> int:
        with self._lock:
            return self._chat_count

    @property
    def requests(self) -> list[dict]:
        with self._lock:
            return list(self._log)

    def stats(self) -> dict:
        with self._lock:
            return {
                "chat_requests": self._chat_count,
                "log": list(self._log),
                "first_chat_at": self._first_chat_at,
                "last_answer_at": self._last_answer_at,
            }

    # internals ---------------------------------------------------------------------------
    def _admit(self, body: dict, api_key: str | None, path: str) -> dict:
        """Count and log one chat request and choose its behaviour."""
        last_user = _last_user_text(body.get("messages") or [])
        with self._lock:
            self._chat_count += 1
            if self._first_chat_at is None:
                self._first_chat_at = time.time()
            behaviour: dict = {}
            for rule in self._rules:
                if rule["contains"] in last_user and rule["times"] != 0:
                    if rule["times"] is not None:
                        rule["times"] -= 1
                    behaviour = rule["behaviour"]
                    break
            else:
                if self._queue:
                    behaviour = self._queue.popleft()
            self._log.append({
                "n": self._chat_count,
                "at": time.time(),
                "path": path,
                "model": body.get("model"),
                "messages": body.get("messages"),
                "tools": body.get("tools"),
                "response_format": body.get("response_format"),
                "stream": bool(body.get("stream")),
                "api_key": api_key,
                "behaviour": behaviour,
                "body": body,
            })
        return behaviour

    def _answered(self) -> None:
        with self._lock:
            self._last_answer_at = time.time()

    def _sleep(self, ms: float) -> None:
        if ms > 0:
            self._stopping.wait(min(ms, MAX_LATENCY_MS) / 1000)


def _answer(body: dict, behaviour: dict) -> tuple[str | None, list[dict]]:
    """The assistant message (content, tool calls) for a non-error behaviour."""
    if "tool_calls" in behaviour:
        calls = behaviour["tool_calls"]
        if calls == "auto":
            tools = body.get("tools") or []
            if not tools:
                return "no tools to call", []
            fn = tools[0].get("function", {})
            calls = [{"name": fn.get("name"), "arguments": synthesize(fn.get("parameters", {}), "arg")}]
        out = []
        for i, call in enumerate(calls):
            arguments = call.get("arguments", {})
            out.append({
                "id": call.get("id", f"call_srv_{i}"),
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            })
        return behaviour.get("content"), out
    if "content" in behaviour:
        content = behaviour["content"]
        return (content if isinstance(content, str) else json.dumps(content)), []
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        return json.dumps(synthesize(spec.get("schema", {}), spec.get("name", "value"))), []
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": _last_user_text(body.get("messages") or [])[:200]}), []
    return "echo: " + _last_user_text(body.get("messages") or []), []


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"
        disable_nagle_algorithm = True  # headers and body are two writes: do not hold the body back
        timeout = 30
        server_version = "agentflow-test-openai/1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error", headers=None) -> None:
            self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

        def _read_json(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True  # the unread body cannot be skipped to the next request
                raise ValueError("request body too large")
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw or b"{}")

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._send_json(200, server.stats())
            elif self.path in ("/v1/models", "/models"):
                self._send_json(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
            elif self.path == "/health":
                self._send_json(200, {"ok": True})
            else:
                self._error(404, f"no route GET {self.path}", "not_found_error")

        def do_POST(self) -> None:
            if self.path not in ("/v1/chat/completions", "/chat/completions", "/control"):
                self._error(404, f"no route POST {self.path}", "not_found_error")
                return
            try:
                body = self._read_json()
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:  # includes JSONDecodeError
                self._error(400, f"invalid JSON body: {exc}")
                return
            if self.path == "/control":
                server.control(body)
                self._send_json(200, {"ok": True})
                return
            if not server._slots.acquire(blocking=False):
                self._error(503, "test server is at capacity", "server_error")
                return
            try:
                self._chat(body)
            finally:
                server._slots.release()
                server._answered()

        def _chat(self, body: dict) -> None:
            auth = self.headers.get("Authorization") or ""
            api_key = auth[7:] if auth.lower().startswith("bearer ") else None
            behaviour = server._admit(body, api_key, self.path)
            server._sleep(server.latency_ms + behaviour.get("latency_ms", 0))
            if not isinstance(body.get("messages"), list):
                self._error(400, "'messages' is a required list")
                return
            if behaviour.get("drop"):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if "status" in behaviour:
                status = int(behaviour["status"])
                headers = {}
                if "retry_after" in behaviour:
                    headers["Retry-After"] = str(behaviour["retry_after"])
                message = str(behaviour.get("message", f"injected error {status}"))
                message = message.replace("{api_key}", api_key or "")
                kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
                self._error(status, message, behaviour.get("error_type", kind), headers)
                return
            if behaviour.get("invalid_json"):
                data = b'{"id": "chatcmpl-broken", "choices": [ not json'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            content, tool_calls = _answer(body, behaviour)
            prompt_tokens = sum(_tokens(_text_of(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
            completion_tokens = _tokens((content or "") + (json.dumps(tool_calls) if tool_calls else ""))
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            finish = "tool_calls" if tool_calls else "stop"
            meta = {"id": f"chatcmpl-{server.chat_count}", "created": int(time.time()), "model": body.get("model", "")}
            if body.get("stream"):
                self._stream(meta, content, tool_calls, finish, usage, body)
                return
            message: dict = {"role": "assistant", "content": content}
            if tool_calls:
                message["tool_calls"] = tool_calls
            self._send_json(200, {
                **meta,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            })

        def _stream(self, meta, content, tool_calls, finish, usage, body) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # no Content-Length: the body ends when the connection does
            self.end_headers()

            def event(choices: list, **extra: Any) -> None:
                chunk = {**meta, "object": "chat.completion.chunk", "choices": choices, **extra}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

            event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            if content:
                step = max(1, len(content) // 3)
                for start in range(0, len(content), step):
                    event([{"index": 0, "delta": {"content": content[start:start + step]}, "finish_reason": None}])
            for i, call in enumerate(tool_calls):
                event([{"index": 0, "delta": {"tool_calls": [{"index": i, **call}]}, "finish_reason": None}])
            event([{"index": 0, "delta": {}, "finish_reason": finish}])
            if (body.get("stream_options") or {}).get("include_usage"):
                event([], usage=usage)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before every chat answer")
    parser.add_argument("--max-concurrent", type=int, default=MAX_CONCURRENT,
                        help="chat requests answered at once; more get a 503")
    parser.add_argument("--keep-alive", action="store_true", help="HTTP/1.1 with persistent connections")
    args = parser.parse_args(argv)
    server = OpenAIServer(port=args.port, latency_ms=args.latency_ms, max_concurrent=args.max_concurrent,
                          keep_alive=args.keep_alive).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(server.port, flush=True)
    while not done.wait(0.2):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
