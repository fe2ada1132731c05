"""Real models through litellm: one `acompletion` per call, its failures classified.

litellm is imported lazily, on the first call, or ahead of it on a background thread
(`import_litellm_in_background`): importing agentflow never imports it, and nothing else in
agentflow imports it.

Structured output with litellm: `response_format = {"type": "json_schema", ...}` is sent when
litellm says the model supports response schemas, or when the model is `openai/...` and an
`api_base` is set (an OpenAI-compatible server: vLLM, llama.cpp, LM Studio, a proxy...; they
accept json_schema or ignore it, and the caller validates either way). Otherwise the schema is
appended to the system message as an instruction to answer with JSON only.

Cost of litellm, and the settings chosen for it (litellm 1.106, measured at 1,000 calls and
concurrency 100 against a local keep-alive server): importing it takes ~2 s of CPU, and each
call 3-4 ms, of which the openai SDK it drives (building, sending, parsing) takes ~40%, its
wrapper, its openai handler and the `completion()` that `acompletion` runs on a worker thread
~25%, and its logging and pricing of the response 20% (priced model) to 30% (unpriced: the
price map's fallback lookups). What we set, and why:
- `LITELLM_LOCAL_MODEL_COST_MAP=True` (before the import): the bundled price map, no fetch
  at import; `LITELLM_TELEMETRY=False`, `suppress_debug_info`, quiet loggers: no output of
  litellm's own on our terminal.
- The cost of a response is the one litellm computed while logging it
  (`_hidden_params["response_cost"]`, None when the model has no price), not a second
  `completion_cost()`: the same number, ~0.1 ms (priced model) to ~0.2 ms (unpriced: fallback
  lookups) less per call.
- The cyclic GC is paused during the import and everything is frozen (`gc.freeze()`) after
  it: the import creates some 400,000 objects that the GC tracks and that live as long as
  the process. The collections the import triggers find almost nothing to free (~0.5 s of
  it), and every later full collection would traverse them again (~0.2 s each; a run of
  1,000 calls has several). The price: cyclic garbage that exists at that moment (a few
  thousand blocks) is only freed at exit.
- litellm keeps one HTTP client per api_base and key, with a keep-alive connection pool, so
  there is no client or session of ours to share.
Tried and not set, as they did not lower the CPU per call: `LITELLM_RUST=True` (its logger
opt-in only moves the two secret-redaction passes per call to Rust; chat completions stay in
Python), `disable_aiohttp_transport` (httpx's own transport: ~1.5 ms more per call), a
one-thread default executor for `completion()`.
"""
from __future__ import annotations

import asyncio
import atexit
import datetime
import email.utils
import gc
import json
import logging
import os
import re
import threading
import time
from typing import Any

from ..redaction import configured_secrets, redact
from .interface import ModelError, ModelRequest, ModelResponse, ToolCall, TransientModelError

_litellm: Any = None
_litellm_lock = threading.Lock()


def load_litellm() -> Any:
    """Import litellm once, quietly, with the bundled cost map (no network fetch)."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_TELEMETRY", "False")
            try:
                litellm = _import_out_of_gc_reach()
            except ImportError as exc:  # pragma: no cover - litellm is a dependency
                raise ModelError(f"the litellm package is needed for real models but cannot be imported: {exc}") from None
            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.set_verbose = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
                logging.getLogger(name).setLevel(logging.ERROR)
            _litellm = litellm
        return _litellm


def import_litellm_in_background() -> None:
    """Start `load_litellm` on a daemon thread, so that its import overlaps what a run does
    before its first call (the rest of startup, the store's open). A failure is left to the
    next `load_litellm()`, which imports again and raises the one clear message."""
    threading.Thread(target=_load_litellm_or_leave_it, name="agentflow-litellm-import", daemon=True).start()


def _load_litellm_or_leave_it() -> None:
    try:
        load_litellm()
    except ModelError:  # reported by the caller's own load_litellm(), where it is needed
        pass


def _import_out_of_gc_reach() -> Any:
    """`import litellm` with the cyclic GC paused, then its objects frozen (see the module
    docstring); interpreter exit unfreezes them, so that they are freed as before (DuckDB's
    bindings report the objects of theirs that are not)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        import litellm
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    atexit.register(gc.unfreeze)
    return litellm


def missing_key_message(model: str, roles: list[str], variables: list[str]) -> str:
    """The one line that says which variables a model needs, for whom, and what to do."""
    who = ("role " if len(roles) == 1 else "roles ") + ", ".join(roles)
    them = "it" if len(variables) == 1 else "them"
    return f"model {model} ({who}) needs {' and '.join(variables)}; set {them} in the environment"


def _json_instruction(schema: dict, name: str) -> str:
    return (
        f"Answer with only a JSON value for {name} that matches this JSON schema, "
        f"with no other text and no code fences:\n{json.dumps(schema, ensure_ascii=False)}"
    )


def _with_instruction(messages: list[dict], instruction: str) -> list[dict]:
    """Append `instruction` to the system message, adding one when there is none."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": "\n\n" + instruction}]
        else:
            first["content"] = (content + "\n\n" if content else "") + instruction
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


class LiteLLMModelClient:
    """Real models through litellm: one `acompletion` call per `complete`, no retries inside."""

    def uses_response_format(self, request: ModelRequest) -> bool:
        """Whether the schema goes in `response_format` (else into the system message)."""
        if request.output_schema is None:
            return False
        if request.api_base and request.model.startswith("openai/"):
            return True  # an OpenAI-compatible server: json_schema is the protocol's way
        litellm = load_litellm()
        try:
            return bool(litellm.supports_response_schema(model=request.model))
        except Exception:
            return False

    async def complete(self, request: ModelRequest) -> ModelResponse:
        api_key = None
        if request.api_key_env:
            api_key = os.environ.get(request.api_key_env)
            if not api_key:
                role = request.task.split(".", 1)[0] if request.task else "?"
                raise ModelError(missing_key_message(request.model, [role], [request.api_key_env]))
        litellm = load_litellm()
        messages = [_wire_message(m) for m in request.messages]
        kwargs: dict[str, Any] = {
            "model": request.model,
            "num_retries": 0,
            "max_retries": 0,
        }
        if request.output_schema is not None:
            if self.uses_response_format(request):
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": _response_format_name(request.output_name),
                        "schema": request.output_schema,
                        "strict": False,
                    },
                }
            else:
                messages = _with_instruction(messages, _json_instruction(request.output_schema, request.output_name))
        kwargs["messages"] = messages
        if request.tools:
            kwargs["tools"] = [dict(t) for t in request.tools]
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.timeout_s is not None:
            kwargs["timeout"] = request.timeout_s
        if request.api_base:
            kwargs["api_base"] = request.api_base
        if api_key:
            kwargs["api_key"] = api_key

        start = time.perf_counter()
        try:
            if request.timeout_s is not None:
                # litellm enforces `timeout`; this bounds anything it does around the request.
                response = await asyncio.wait_for(litellm.acompletion(**kwargs), request.timeout_s + 5.0)
            else:
                response = await litellm.acompletion(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # classified below; never re-raised raw
            raise classify(exc, request, litellm) from None
        latency_ms = (time.perf_counter() - start) * 1000
        return _parse_response(response, request, latency_ms)


def _wire_message(message: dict) -> dict:
    """A copy of `message` as providers expect it: tool-call arguments as JSON text."""
    out = dict(message)
    calls = out.get("tool_calls")
    if calls:
        wired = []
        for call in calls:
            call = dict(call)
            function = dict(call.get("function") or {})
            if not isinstance(function.get("arguments", ""), str):
                function["arguments"] = json.dumps(function["arguments"], ensure_ascii=False)
            call["function"] = function
            call.setdefault("type", "function")
            wired.append(call)
        out["tool_calls"] = wired
    return out


def _response_format_name(name: str) -> str:
    """OpenAI requires ^[a-zA-Z0-9_-]{1,64}$ for the schema name."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "_" for c in (name or "answer"))
    return cleaned[:64] or "answer"


def _parse_response(response: Any, request: ModelRequest, latency_ms: float) -> ModelResponse:
    try:
        choice = response.choices[0]
        message = choice.message
    except (AttributeError, IndexError, TypeError):
        raise TransientModelError(f"model {request.model}: the provider returned a response without choices") from None
    content = getattr(message, "content", None)
    calls = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or [], start=1):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        raw_args = getattr(function, "arguments", None)
        if not name:
            raise TransientModelError(f"model {request.model}: the model returned a tool call without a name")
        if raw_args is None or (isinstance(raw_args, str) and not raw_args.strip()):
            arguments: Any = {}
        elif isinstance(raw_args, dict):
            arguments = raw_args
        else:
            try:
                arguments = json.loads(raw_args)
            except (TypeError, ValueError):
                arguments = None
        if not isinstance(arguments, dict):
            # Malformed output of the model: a new sample usually fixes it, so let the caller retry.
            raise TransientModelError(
                f"model {request.model}: the model called tool {name!r} with arguments that are not a JSON object"
            )
        calls.append(ToolCall(id=getattr(call, "id", None) or f"call_{request.turn}_{i}", name=name, arguments=arguments))
    if calls and content == "":
        content = None
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    # litellm prices every response while logging it; None: the model is not in its price map.
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    return ModelResponse(
        content=content,
        tool_calls=tuple(calls),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=float(cost) if cost is not None else None,
        latency_ms=latency_ms,
        model=request.model,
    )


# A provider's Retry-After above this many seconds is cut to it (both engines wait for the
# hint instead of their backoff): a run waits, but not for hours.
RETRY_AFTER_MAX = 60.0


def _retry_after_seconds(value: str) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date; None when unreadable."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a sloppy server may leave the zone out
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _retry_after(exc: Exception) -> float | None:
    headers: Any  # litellm's, or the HTTP response's, or None
    for headers in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None)):
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except Exception:  # no headers, or not a mapping
            continue
        seconds = _retry_after_seconds(str(value)) if value else None
        if seconds is not None:
            return min(seconds, RETRY_AFTER_MAX)
    return None


# litellm's wrapping of a provider's message: "litellm.AuthenticationError: AuthenticationError:
# OpenAIException - <the provider's message>".
_WRAPPING = re.compile(r"^(?:(?:litellm\.)?\w*(?:Error|Exception)(?::| -)\s*)+")
# Failures of credentials that the openai SDK reports as HTTP 500 without sending anything.
_LOCAL_KEY_FAILURES = {
    "Missing credentials": "no API key",
    "api_key client option must be set": "no API key",
    "Forbidden control character detected in headers": "the key contains a control character (a newline?)",
    "Illegal header value": "the key contains a control character (a newline?)",
}


def _provider_message(text: str) -> str:
    """The provider's own words in a litellm error text, one line, without litellm's wrapping."""
    return _WRAPPING.sub("", " ".join(text.split()))


def _local_key_failure(detail: str) -> str | None:
    return next((what for marker, what in _LOCAL_KEY_FAILURES.items() if marker in detail), None)


def classify(exc: Exception, request: ModelRequest, litellm: Any) -> ModelError:
    """Map anything litellm (or the network under it) raises to ModelError / TransientModelError.
    Keys are masked in the raw text, before anything else touches it."""
    if isinstance(exc, ModelError):
        return exc
    secrets = configured_secrets(os.environ, [request.api_key_env] if request.api_key_env else [])
    detail = _provider_message(redact(str(exc), secrets)) or type(exc).__name__
    if len(detail) > 500:
        detail = detail[:500] + "..."
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    where = f"model {request.model}" + (f" at {request.api_base}" if request.api_base else "")

    def transient(what: str) -> TransientModelError:
        return TransientModelError(f"{where}: {what}: {detail}", retry_after=_retry_after(exc))

    def permanent(what: str) -> ModelError:
        return ModelError(f"{where}: {what}: {detail}")

    missing = re.search(r"No module named '([\w.]+)'", detail)
    if isinstance(exc, ImportError) or missing:
        # litellm imports some packages only at call time (e.g. `mcp` whenever tools are sent).
        package = missing.group(1).split(".")[0] if missing else getattr(exc, "name", None) or "?"
        return ModelError(f"{where}: litellm needs the Python package {package!r}, which is not installed: {detail}")
    ex = litellm.exceptions
    hint = f", check the key in {request.api_key_env}" if request.api_key_env else ""
    local = _local_key_failure(detail)
    if local is not None:
        return permanent(f"authentication failed ({local}{hint})")
    if status in (401, 403) or isinstance(exc, (ex.AuthenticationError, ex.PermissionDeniedError)):
        return permanent(f"authentication failed (HTTP {status or 401}{hint})")
    if isinstance(exc, getattr(ex, "ContextWindowExceededError", ())):
        return permanent("the prompt is longer than the model's context window")
    if isinstance(exc, ex.RateLimitError) or status == 429:
        return transient("rate limited (HTTP 429)")
    if isinstance(exc, ex.Timeout) or isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or status == 408:
        return transient("timed out" + (f" after {request.timeout_s:g}s" if request.timeout_s else ""))
    if status is not None and (status >= 500 or status == 409):
        return transient(f"server error (HTTP {status})")
    transient_types = tuple(
        t for t in (
            getattr(ex, "APIConnectionError", None),
            getattr(ex, "ServiceUnavailableError", None),
            getattr(ex, "InternalServerError", None),
            getattr(ex, "BadGatewayError", None),
        ) if t is not None
    )
    if isinstance(exc, transient_types) or isinstance(exc, ConnectionError):
        return transient("connection or server error")
    if status == 404 or isinstance(exc, ex.NotFoundError):
        return permanent("not found (unknown model or wrong api_base?)")
    if isinstance(exc, (ex.BadRequestError, ex.UnprocessableEntityError)) or (status is not None and 400 <= status < 500):
        return permanent(f"the provider rejected the request (HTTP {status or 400})")
    return permanent(f"unexpected error {type(exc).__name__}")
