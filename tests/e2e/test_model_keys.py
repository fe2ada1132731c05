"""Models, keys and retries at the boundary, through real `agentflow run` subprocesses, a real
DuckDB file and our OpenAI-protocol server: a missing key stops the run before any request
(exit 2), authentication failures are neither retried nor dressed up as server errors, a
Retry-After is waited for, and no form of a key reaches stderr or the database."""
from __future__ import annotations

import time

import duckdb
import pytest

from agentflow.runtime.redaction import MASK, redact, secret_forms
from runtime_support import DB, KEY_ENV, OpenAIServer, af, base_env, llm_defaults, ok, requests_with, runs, show, \
    write

ONE_ROLE = """
role writer {
  task write(topic: str) -> str { prompt = "WRITE about {topic}" }
}

choreography main() -> str {
  return writer.write("keys")
}
"""
# A key with a tab reaches the server, which quotes it back in its 401; a key with a newline
# is refused by the HTTP client before anything is sent.
TAB_KEY = "sk-agentflow\ttab-Q7v9ZkP2xW"
NEWLINE_KEY = "sk-agentflow\nnewline-R8w0AlQ3yX"
NEWLINE_ENV = "AGENTFLOW_TEST_NEWLINE_KEY"
AUTH_BODY = f"""
role locked {{
  task ask(q: str) -> str {{ prompt = "AUTH401 {{q}}" }}
}}

role forbidden {{
  task ask(q: str) -> str {{ prompt = "AUTH403 {{q}}" }}
}}

role mangled {{
  api_key_env = "{NEWLINE_ENV}"
  task ask(q: str) -> str {{ prompt = "MANGLED {{q}}" }}
}}

choreography main() -> json {{
  a = locked.ask("x")
  b = forbidden.ask("y")
  c = mangled.ask("z")
  return {{a: a, b: b, c: c}}
}}
"""


def env_without(*names: str, **extra: str) -> dict[str, str]:
    env = base_env(**extra)
    for name in names:
        env.pop(name, None)
    return env


def database_texts(path) -> str:
    """Every value of every table of a DuckDB file, as text."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()]
        return "\n".join(str(row) for table in tables for row in con.execute(f'select * from "{table}"').fetchall())


def assert_no_form_of(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            for text in texts:
                assert form not in text, f"a key leaked as {form!r}"


def timed(fn):
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def test_a_missing_api_key_env_variable_stops_the_run_before_any_request(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server) + ONE_ROLE)
    # the baseline: starting the CLI and compiling, on this machine at this moment
    _, baseline = timed(lambda: ok(af(tmp_path, "compile", "flow.agentflow")))
    result, elapsed = timed(lambda: ok(af(tmp_path, "run", "flow.agentflow", env=env_without(KEY_ENV)), 2))
    assert result.stderr == (f"error: model openai/gpt-4o-mini (role writer) needs {KEY_ENV}; "
                             "set it in the environment\n")
    assert server.chat_count == 0
    assert not (tmp_path / DB).exists(), "a run that cannot start writes nothing"
    assert elapsed - baseline < 1.0, f"{elapsed:.2f}s, compiling {baseline:.2f}s: no litellm import, no retries"


def test_a_missing_provider_key_stops_a_model_override_before_any_request(tmp_path, server):
    # no api_key_env: the key is the provider's own variable, and an api_base does not waive it
    write(tmp_path / "flow.agentflow", f'defaults {{\n  model = "scripted"\n  api_base = "{server.base_url}"\n}}\n'
          + ONE_ROLE)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--model", "openai/gpt-4o-mini"), 2)
    assert result.stderr == ("error: model openai/gpt-4o-mini (role writer) needs OPENAI_API_KEY; "
                             "set it in the environment\n")
    assert server.chat_count == 0
    assert not (tmp_path / DB).exists()
    ok(af(tmp_path, "run", "flow.agentflow"))  # scripted needs no key


def test_the_check_covers_delegated_roles_and_skips_unreachable_ones(tmp_path):
    write(tmp_path / "flow.agentflow", f"""
role helper {{
  model = "openai/gpt-4o-mini"
  api_key_env = "{KEY_ENV}"
  task help(q: str) -> str {{ prompt = "HELP {{q}}" }}
}}

role idle {{
  model = "openai/gpt-4o-mini"
  api_key_env = "AGENTFLOW_TEST_UNSET_KEY"
  task rest(q: str) -> str {{ prompt = "REST {{q}}" }}
}}

role lead {{
  model = "scripted"
  tools = [helper.help]
  task ask(q: str) -> str {{ prompt = "ASK {{q}}" }}
}}

choreography main() -> str {{
  return lead.ask("q")
}}
""")
    result = ok(af(tmp_path, "run", "flow.agentflow", env=env_without(KEY_ENV)), 2)
    assert "role `idle` is never used" in result.stderr  # the compiler's warning
    assert result.stderr.endswith(f"\nerror: model openai/gpt-4o-mini (role helper) needs {KEY_ENV}; "
                                  "set it in the environment\n")


def test_a_dry_run_needs_no_key(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server) + ONE_ROLE)
    result = ok(af(tmp_path, "run", "flow.agentflow", "--dry-run", env=env_without(KEY_ENV)))
    assert "main/" in result.stdout and server.chat_count == 0


@pytest.fixture(scope="module")
def auth_run(tmp_path_factory):
    """One run whose three nodes fail authentication: 401 and 403 from the server (which
    quotes the tab key back), and a key with a newline that is never sent."""
    tmp = tmp_path_factory.mktemp("auth")
    with OpenAIServer() as server:
        write(tmp / "flow.agentflow", llm_defaults(server, retries=2) + AUTH_BODY)
        server.add_rule("AUTH401", {"status": 401, "message": "Incorrect API key provided: {api_key}"})
        server.add_rule("AUTH403", {"status": 403, "message": "key {api_key} may not use this model"})
        result = af(tmp, "run", "flow.agentflow", env=base_env(**{KEY_ENV: TAB_KEY, NEWLINE_ENV: NEWLINE_KEY}))
        (run,) = runs(tmp)
        yield dict(tmp=tmp, server=server, result=result, requests=server.requests, nodes=show(tmp, run["run_id"]))


def test_authentication_failures_are_not_retried(auth_run):
    ok(auth_run["result"], 3)
    server = auth_run["server"]
    assert len(requests_with(server, "AUTH401")) == 1
    assert len(requests_with(server, "AUTH403")) == 1
    assert requests_with(server, "MANGLED") == []
    assert {n: auth_run["nodes"][n]["attempts"] for n in ("main/a", "main/b", "main/c")} == \
        {"main/a": 1, "main/b": 1, "main/c": 1}


def test_authentication_failures_say_so_once(auth_run):
    nodes = auth_run["nodes"]
    where = f"model openai/gpt-4o-mini at {auth_run['server'].base_url}"
    assert nodes["main/a"]["error"] == (f"{where}: authentication failed (HTTP 401, check the key in {KEY_ENV}): "
                                        f"Incorrect API key provided: {MASK}")
    assert nodes["main/b"]["error"] == (f"{where}: authentication failed (HTTP 403, check the key in {KEY_ENV}): "
                                        f"key {MASK} may not use this model")
    assert nodes["main/c"]["error"].startswith(
        f"{where}: authentication failed (the key contains a control character (a newline?), "
        f"check the key in {NEWLINE_ENV}): ")
    for node in ("main/a", "main/b", "main/c"):
        error = nodes[node]["error"]
        assert error.count("model openai/gpt-4o-mini") == 1, error
        assert "Error:" not in error and "Exception" not in error and "server error" not in error, error
    stderr = auth_run["result"].stderr
    assert "authentication failed" in stderr and "model openai/gpt-4o-mini: model" not in stderr


def test_no_form_of_a_key_reaches_stderr_or_the_database(auth_run):
    assert {r["api_key"] for r in auth_run["requests"]} == {TAB_KEY}  # the server saw it, and quoted it
    result, db = auth_run["result"], auth_run["tmp"] / DB
    files = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in db.parent.glob(db.name + "*"))
    assert_no_form_of([TAB_KEY, NEWLINE_KEY], result.stderr, result.stdout, database_texts(db), files)


def test_retry_after_is_waited_for(tmp_path, server):
    write(tmp_path / "flow.agentflow", llm_defaults(server, retries=2) + ONE_ROLE)
    server.add_rule("WRITE", {"status": 429, "retry_after": 1, "message": "slow down"}, times=1)
    ok(af(tmp_path, "run", "flow.agentflow"))  # the backoff of these tests is 0.01 s
    first, second = (r["at"] for r in requests_with(server, "WRITE"))
    assert 1.0 <= second - first < 3.0


@pytest.mark.parametrize("secret, text", [
    (TAB_KEY, f"key {TAB_KEY} rejected"),
    (TAB_KEY, "key sk-agentflow tab-Q7v9ZkP2xW rejected"),  # whitespace collapsed
    (TAB_KEY, 'body {"key": "sk-agentflow\\ttab-Q7v9ZkP2xW"}'),  # JSON
    (NEWLINE_KEY, "header b'Bearer sk-agentflow\\nnewline-R8w0AlQ3yX'"),  # repr of bytes
    (NEWLINE_KEY, "url ?key=sk-agentflow%0Anewline-R8w0AlQ3yX"),  # URL-encoded
    (" sk-padded-key-1234\n", "key sk-padded-key-1234 rejected"),  # stripped
])
def test_redact_masks_every_form(secret, text):
    assert redact(text, [secret]).count(MASK) == 1
