"""Every boundary of a tool call holds: argument types, OS errors, undecodable names, timeouts,
output caps and stdout. Unit tests go through `call_tool` / `check_arguments` (the contract a
task loop relies on); end-to-end tests run the real `agentflow` CLI in subprocesses on a real
DuckDB file."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from agentflow.compiler.hashing import canonical_json, value_hash
from agentflow.compiler.types import Validators, type_from_json
from agentflow.runtime import tools
from agentflow.runtime.store import MAX_VALUE_BYTES, Store, ValueTooLarge
from agentflow.runtime.tools import (
    ToolContext,
    ToolError,
    ToolSpec,
    TransientToolError,
    call_tool,
    check_arguments,
)

from runtime_support import DB, af, last_run, ok, result_json, reused, show, write

PY = sys.executable
UNDECODABLE = b"\xff-report.txt"  # not UTF-8: Python names it "\udcff-report.txt"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    return ToolContext(spec_dir=spec_dir, workspace=tmp_path / "ws")


def py_tool(ctx: ToolContext, source: str, timeout=None, params=()) -> ToolSpec:
    (ctx.spec_dir / "bounds_tools.py").write_text(textwrap.dedent(source))
    return ToolSpec(name="t", params=tuple(params), kind="python", target="bounds_tools:f",
                    returns_str=False, timeout_s=timeout)


def cmd_tool(argv, returns_str=True, timeout=None) -> ToolSpec:
    return ToolSpec(name="c", params=("a",), kind="command", target=tuple(argv),
                    returns_str=returns_str, timeout_s=timeout)


def fs_tool(builtin: str) -> ToolSpec:
    return ToolSpec(name=builtin.replace(".", "_"), params=("path", "content"), kind="builtin",
                    target=builtin, returns_str=builtin != "fs.list")


# ------------------------------------------------------------------------------------------
# Arguments are checked against the declared parameter types


PARAMS = [{"name": "x", "type": "int", "has_default": False, "default": None},
          {"name": "tags", "type": {"list": "str"}, "has_default": True, "default": ["none"]}]


def check(args: dict) -> dict:
    return check_arguments("add", PARAMS, args, Validators({}))


def test_a_mistyped_argument_is_refused_naming_it() -> None:
    with pytest.raises(ToolError) as err:
        check({"x": "notanint"})
    assert str(err.value).startswith("argument x: expected int: ")
    with pytest.raises(ToolError, match=r"argument tags: expected list\[str\]: at 1: "):
        check({"x": 1, "tags": ["a", 2]})


def test_missing_and_unknown_arguments_are_refused() -> None:
    with pytest.raises(ToolError, match=r"argument x: missing; tool add takes \(x: int, tags: list\[str\]\)"):
        check({})
    with pytest.raises(ToolError, match="tool add got unknown argument"):
        check({"x": 1, "y": 2})


def test_arguments_are_converted_and_defaults_filled() -> None:
    assert check({"x": "3"}) == {"x": 3, "tags": ["none"]}
    assert check({"x": 3, "tags": ["a"]}) == {"x": 3, "tags": ["a"]}


# ------------------------------------------------------------------------------------------
# OS errors are the tool's errors


@pytest.mark.parametrize("builtin", ["fs.read", "fs.write", "fs.list"])
@pytest.mark.parametrize("path", ["n" * 300, "d/" * 2100 + "f"], ids=["name-300-bytes", "path-4200-bytes"])
def test_a_name_or_path_too_long_is_a_tool_error(ctx: ToolContext, builtin: str, path: str) -> None:
    with pytest.raises(ToolError) as err:
        run(call_tool(fs_tool(builtin), {"path": path, "content": "x"}, ctx))
    assert "too long" in str(err.value)
    assert len(str(err.value)) < 400  # the path is shortened in the message


def test_an_unencodable_path_is_a_tool_error(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="tool fs_read: "):
        run(call_tool(fs_tool("fs.read"), {"path": "\ud800.txt"}, ctx))


def test_a_nul_in_a_command_argument_is_a_tool_error(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="cannot start"):
        run(call_tool(cmd_tool(["echo", "{a}"]), {"a": "x\x00y"}, ctx))


# ------------------------------------------------------------------------------------------
# Undecodable names and lone surrogates are stored and hashed consistently


def test_ordinary_values_keep_their_hashes() -> None:
    """Pinned before surrogates were handled: existing databases keep their keys."""
    assert value_hash("héllo") == "76880373d6bd1bbb409040f54bf0dffc235b3771b7c09a2d04a8f5b23bc6309f"
    assert value_hash({"b": [1, 2.5, None, True], "a": "ü\u2028"}) == (
        "cfe13df312b78f75a822e3c472aa7a0eabfb454dc29fa3292591c13eef5faf2f")


@pytest.mark.parametrize("value", [
    "héllo", "", 1.5, -0.0, 1e300, 2 ** 70, True, None, [], {}, [1, "a", None, [2.5, {"z": 1, "a": 2}]],
    {"b": [1, 2.5, None, True], "a": "ü\u2028", "": {"\n": "\"q\" \\ \x00"}},
])
def test_canonical_json_is_sorted_compact_json(value) -> None:
    """The same text as `json.dumps` with sorted keys and no whitespace (keys depend on it)."""
    assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_canonical_json_refuses_what_json_cannot_spell() -> None:
    for value in (float("nan"), {"x": float("inf")}):
        with pytest.raises(ValueError):
            canonical_json(value)
    with pytest.raises(TypeError):
        canonical_json({"x": object()})


@pytest.mark.parametrize("type_name", ["str", "int", "float", "bool"])
@pytest.mark.parametrize("value", [0, -7, 2 ** 70, True, 1.5, -0.0, float("inf"), "3", "é\udcff", None, [1]])
def test_validating_a_primitive_gives_what_pydantic_gives(type_name: str, value) -> None:
    """The fast path for a value of exactly its primitive's Python type changes nothing: the
    value validates as it does inside a list, which pydantic checks."""
    validators = Validators({})
    t, in_list = type_from_json(type_name), type_from_json({"list": type_name})
    for strict in (False, True):
        try:
            expected = validators.validate(in_list, [value], strict=strict)[0]
        except ValueError as err:
            with pytest.raises(type(err)):
                validators.validate(t, value, strict=strict)
            continue
        got = validators.validate(t, value, strict=strict)
        assert type(got) is type(expected) and (got == expected or got != got and expected != expected)


def test_fs_list_names_an_undecodable_file(ctx: ToolContext) -> None:
    ws = Path(ctx.workspace)
    ws.mkdir()
    fd = os.open(os.fsencode(ws) + b"/" + UNDECODABLE, os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    names = run(call_tool(fs_tool("fs.list"), {}, ctx))
    assert names == [os.fsdecode(UNDECODABLE)] == ["\udcff-report.txt"]
    # the model may send the name back: it reaches the same file
    assert run(call_tool(fs_tool("fs.read"), {"path": names[0]}, ctx)) == ""


@pytest.mark.parametrize("value", [
    ["\udcff-report.txt"],
    {"\udcff": "x\ud800y", "plain": "é"},
    "\ude00\ud83d",  # a low then a high surrogate: no pair
    {"agentflow:json": "[1]"},  # looks like the store's wrapping of such values
], ids=["list", "keys-and-values", "reversed-pair", "wrapper-lookalike"])
def test_values_with_lone_surrogates_round_trip_through_the_store(tmp_path: Path, value) -> None:
    text = canonical_json(value)
    text.encode("utf-8")  # valid UTF-8: hashable and storable
    assert json.loads(text) == value
    with Store.open_writer(tmp_path / "db.duckdb") as store:
        store.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={"v": value})
        store.node_started("r", "main/a", role=None, key="k")
        stored_hash = store.node_finished("r", "main/a", status="succeeded", value=value)
        store.node_started("r", "main/b", role=None, key="kb")
        store.node_finished("r", "main/b", status="failed", error=f"no such file: {value!r}")
        store.append_turn("r", "main/a", key="k", kind="tool", payload={"content": value})
        store.flush()
        (read_back, read_hash), = store.lookup_results(["k"]).values()
        assert read_back == value
        assert read_hash == stored_hash == value_hash(value) == value_hash(read_back)
        assert [t.payload for t in store.load_turns("r", "main/a")] == [{"content": value}]


def test_a_python_tool_result_is_stored_as_json_reads_it_back(ctx: ToolContext) -> None:
    spec = py_tool(ctx, r'''
        def f():
            return {"pair": "\ud83d\ude00", "lone": "\udcff"}
    ''')
    value = run(call_tool(spec, {}, ctx))
    assert value == {"pair": "\U0001f600", "lone": "\udcff"}
    assert json.loads(canonical_json(value)) == value


# ------------------------------------------------------------------------------------------
# Timeouts and output caps


SLOW_SYNC = "import time\ndef f():\n    time.sleep(30)\n"
SLOW_ASYNC = "import asyncio\nasync def f():\n    await asyncio.sleep(30)\n"


@pytest.mark.parametrize("source", [SLOW_SYNC, SLOW_ASYNC], ids=["sync", "async"])
def test_python_tools_honour_their_timeout(ctx: ToolContext, source: str) -> None:
    with pytest.raises(TransientToolError, match=r"^tool t timed out after 0.3s$"):
        run(call_tool(py_tool(ctx, source, timeout=0.3), {}, ctx))


def test_a_command_honours_its_timeout(ctx: ToolContext) -> None:
    with pytest.raises(TransientToolError, match="timed out after 0.3s"):
        run(call_tool(cmd_tool([PY, "-c", "import time; time.sleep(30)"], timeout=0.3), {}, ctx))


def test_a_tool_without_timeout_gets_the_default(ctx: ToolContext, monkeypatch) -> None:
    assert tools.DEFAULT_TIMEOUT_S == 600
    monkeypatch.setattr(tools.workers, "DEFAULT_TIMEOUT_S", 0.3)  # where calls read it
    with pytest.raises(TransientToolError, match=r"after 0.3s \(the default timeout; set `timeout`"):
        run(call_tool(py_tool(ctx, SLOW_SYNC), {}, ctx))
    with pytest.raises(TransientToolError, match="after 0.3s"):
        run(call_tool(cmd_tool([PY, "-c", "import time; time.sleep(30)"]), {}, ctx))


def test_a_fifo_read_by_fs_read_times_out(ctx: ToolContext) -> None:
    Path(ctx.workspace).mkdir()
    os.mkfifo(Path(ctx.workspace) / "pipe")
    spec = ToolSpec(name="r", params=("path",), kind="builtin", target="fs.read", returns_str=True,
                    timeout_s=0.3)
    with pytest.raises(TransientToolError, match="timed out"):
        run(call_tool(spec, {"path": "pipe"}, ctx))


HUGE = "import sys; sys.stdout.write('x' * (3 << 20))"


def test_command_output_is_cut_at_the_cap_and_says_how_much(ctx: ToolContext) -> None:
    out = run(call_tool(cmd_tool([PY, "-c", HUGE]), {}, ctx))
    cap = tools.OUTPUT_CAP_BYTES
    assert cap == 1 << 20
    assert out == "x" * cap + f"\n[... {(3 << 20) - cap} bytes cut ...]"


def test_command_json_output_over_the_cap_is_a_tool_error(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"printed 3145728 bytes, more than the 1048576"):
        run(call_tool(cmd_tool([PY, "-c", HUGE], returns_str=False), {}, ctx))


# ------------------------------------------------------------------------------------------
# End to end: the real CLI


def test_e2e_what_a_tool_prints_goes_to_stderr(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        tool chatty(n: int) -> json { python = "tools:chatty" }
        choreography main() -> json {
          r = chatty(2)
          return r
        }
    """)
    write(tmp_path / "tools.py", """
        import os
        def chatty(n):
            print("PRINTED by the tool")
            os.system("echo ECHOED by a child process")
            return {"n": n}
    """)
    result = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(result) == {"n": 2}
    assert "PRINTED by the tool" in result.stderr and "ECHOED by a child process" in result.stderr


def test_e2e_an_undecodable_file_name_is_stored_and_reused(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        tool ls(path: str) -> list[str] { builtin = "fs.list" }
        tool count(names: list[str]) -> int { python = "tools:count" }
        choreography main() -> json {
          names = ls(".")
          n = count(names)
          return {names: names, n: n}
        }
    """)
    write(tmp_path / "tools.py", "def count(names):\n    return len(names)\n")
    ws = tmp_path / ".agentflow" / "workspace"
    ws.mkdir(parents=True)
    (ws / "plain.txt").write_text("x")
    os.close(os.open(os.fsencode(ws) + b"/" + UNDECODABLE, os.O_CREAT | os.O_WRONLY))

    first = ok(af(tmp_path, "run", "flow.agentflow"))
    expected = {"names": ["plain.txt", "\udcff-report.txt"], "n": 2}
    assert result_json(first) == expected
    second = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(second) == expected
    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert nodes["main/names"]["cached"] and nodes["main/n"]["cached"]  # same value, same hash


def test_e2e_the_scripted_model_answers_a_prompt_with_an_undecodable_file_name(tmp_path: Path) -> None:
    """No script rule matches, so the model seeds its answer from the prompt, which holds a
    lone surrogate; the seed hashes it escaped, as every other key does."""
    write(tmp_path / "flow.agentflow", """
        defaults { model = "scripted" }
        tool ls(path: str) -> list[str] { builtin = "fs.list" }
        role clerk {
          task describe(names: list[str]) -> str { prompt = "Describe {names}" }
        }
        choreography main() -> str {
          names = ls(".")
          d = clerk.describe(names)
          return d
        }
    """)
    ws = tmp_path / ".agentflow" / "workspace"
    ws.mkdir(parents=True)
    os.close(os.open(os.fsencode(ws) + b"/" + UNDECODABLE, os.O_CREAT | os.O_WRONLY))

    first = result_json(ok(af(tmp_path, "run", "flow.agentflow", "--force", "main/d")))
    assert first.startswith("scripted answer to clerk.describe")
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", "--force", "main/d"))) == first  # same seed


def test_e2e_a_model_repairs_a_call_with_a_bad_argument(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        defaults { model = "scripted:script.json" }
        tool add(x: int) -> int { python = "tools:add" }
        role calc {
          tools = [add]
          task go() -> str { prompt = "GO" }
        }
        choreography main() -> str {
          r = calc.go()
          return r
        }
    """)
    write(tmp_path / "tools.py", "def add(x):\n    return x + 1\n")
    (tmp_path / "script.json").write_text(json.dumps({"rules": [
        {"turn": 1, "tool_calls": [{"name": "add", "arguments": {"x": "notanint"}}]},
        {"turn": 2, "contains": "error: argument x: expected int", "tool_calls": [{"name": "add", "arguments": {"x": 2}}]},
        {"turn": 3, "echo": "last"},
    ]}))
    result = ok(af(tmp_path, "run", "flow.agentflow"))
    assert result_json(result) == "3"


def test_e2e_a_path_too_long_fails_the_node_cleanly(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", f"""
        tool cat(path: str) -> str {{ builtin = "fs.read" }}
        choreography main() -> str {{
          r = cat("{'n' * 300}")
          return r
        }}
    """)
    result = ok(af(tmp_path, "run", "flow.agentflow"), 3)
    assert "File name too long" in result.stderr and result.stdout == ""
    run_id = last_run(tmp_path)["run_id"]
    assert show(tmp_path, run_id)["main/r"]["status"] == "failed"


def test_e2e_huge_command_output_is_capped(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", f"""
        tool loud() -> str {{ command = ["{PY}", "-c", "{HUGE}"] }}
        choreography main() -> str {{
          r = loud()
          return r
        }}
    """)
    value = result_json(ok(af(tmp_path, "run", "flow.agentflow")))
    assert value.endswith(f"\n[... {(3 << 20) - tools.OUTPUT_CAP_BYTES} bytes cut ...]")
    assert len(value) < tools.OUTPUT_CAP_BYTES + 100


def test_e2e_a_tool_over_its_timeout_fails_saying_so(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        tool slow() -> str {
          python = "tools:slow"
          timeout = 300ms
          retries = 0
        }
        choreography main() -> str {
          r = slow()
          return r
        }
    """)
    write(tmp_path / "tools.py", "import time\ndef slow():\n    time.sleep(30)\n")
    result = ok(af(tmp_path, "run", "flow.agentflow", timeout=20), 3)
    assert "tool slow timed out after 0.3s" in result.stderr


def test_a_value_at_the_size_bound_is_stored_and_one_over_it_is_refused(tmp_path: Path) -> None:
    """The bound is one the writer can honour: a value just within it is stored, read back
    after the log is replayed, and a byte more is refused before anything is buffered."""
    db = tmp_path / "agentflow.duckdb"
    inside = "é" * ((MAX_VALUE_BYTES - 2) // 2)  # two bytes each in UTF-8, with its quotes
    with Store.open_writer(db) as store:
        store.begin_run("r", flow="f", entry="main", plan_hash="p", inputs={})
        store.node_started("r", "n1", role=None, key="k1")
        store.node_finished("r", "n1", status="succeeded", value=inside)
        store.node_started("r", "n2", role=None, key="k2")
        with pytest.raises(ValueTooLarge, match=r"32\.0 MB as JSON, over the 32 MB a stored value may be"):
            store.node_finished("r", "n2", status="succeeded", value=inside + "x")
        store.flush()
        store.close(checkpoint=False)  # the next open replays the value from the log
    with Store.open_reader(db) as reader:
        assert reader.lookup_results(["k1"])["k1"][0] == inside
        assert reader.lookup_results(["k2"]) == {}


def test_e2e_a_result_too_large_to_store_fails_its_node_and_keeps_the_database(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        tool blob(mb: int) -> str { python = "tools:blob" }
        choreography main(mb: int = 33) -> int {
          b = blob(mb)
          return len(b)
        }
    """)
    write(tmp_path / "tools.py", "def blob(mb):\n    return 'x' * (mb << 20)\n")
    result = ok(af(tmp_path, "run", "flow.agentflow"), 3)
    assert "Traceback" not in result.stderr
    assert "main/b" in result.stderr and "its result is 33.0 MB as JSON, over the 32 MB" in result.stderr
    failed = last_run(tmp_path)
    assert failed["status"] == "failed" and show(tmp_path, failed["run_id"])["main/b"]["status"] == "failed"
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", "--input", "mb=1"))) == 1 << 20


def test_e2e_inputs_too_large_to_store_are_refused_before_the_run(tmp_path: Path) -> None:
    write(tmp_path / "flow.agentflow", """
        choreography main(s: str) -> int {
          return len(s)
        }
    """)
    (tmp_path / "big.json").write_text(json.dumps({"s": "y" * (33 << 20)}))
    result = ok(af(tmp_path, "run", "flow.agentflow", "--inputs", "big.json"), 2)
    assert result.stderr.startswith("error: the run's inputs are 33.0 MB as JSON, over the 32 MB")
    assert "Traceback" not in result.stderr
    assert json.loads(ok(af(tmp_path, "runs", "--json")).stdout) == []  # nothing recorded


def test_e2e_a_flow_with_several_large_results_runs_again_and_reuses_them(tmp_path: Path) -> None:
    """Values near the bound, several in one commit: the writer's DuckDB holds each whole, and
    neither the commit nor the next run's preload may run out of memory (both did under a
    192 MB bound: the flow could not run again)."""
    write(tmp_path / "flow.agentflow", """
        tool blob(i: int) -> str { python = "tools:blob" }
        choreography main(items: list[int] = [0, 1, 2, 3, 4, 5, 6], note: str = "") -> int {
          bs = for i in items {
            yield blob(i)
          }
          return len(bs)
        }
    """)
    write(tmp_path / "tools.py", "def blob(i):\n    return chr(97 + i) * (30 << 20)\n")
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", timeout=120))) == 7
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", "--input", "note=again", timeout=120))) == 7
    nodes = show(tmp_path, last_run(tmp_path)["run_id"])
    assert reused(nodes) >= {f"main/bs[{i}]/yield@1" for i in range(7)}


def test_e2e_a_large_tool_result_a_model_reads_is_journaled_and_its_answer_stored(tmp_path: Path) -> None:
    """The bound is on what a node gives: the journal of a task keeps a larger tool result
    the model read, and the task's own small answer is its result."""
    write(tmp_path / "flow.agentflow", """
        defaults { model = "scripted:script.json" }
        tool blob(mb: int) -> str { python = "tools:blob" }
        role reader {
          tools = [blob]
          task go() -> str { prompt = "GO" }
        }
        choreography main() -> str {
          r = reader.go()
          return r
        }
    """)
    write(tmp_path / "tools.py", "def blob(mb):\n    return 'x' * (mb << 20)\n")
    (tmp_path / "script.json").write_text(json.dumps({"rules": [
        {"turn": 1, "tool_calls": [{"name": "blob", "arguments": {"mb": 33}}]},
        {"turn": 2, "content": "read it"},
    ]}))
    assert result_json(ok(af(tmp_path, "run", "flow.agentflow", timeout=120))) == "read it"
    assert show(tmp_path, last_run(tmp_path)["run_id"])["main/r"]["status"] == "succeeded"
