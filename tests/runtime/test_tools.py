"""Tests of runtime.tools: templates, python/command/builtin tools. Real files, real processes."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from agentflow.runtime.tools import (
    TemplateError,
    ToolContext,
    ToolError,
    ToolSpec,
    TransientToolError,
    call_tool,
    compile_template,
    render_template,
    tool_code_version,
)

PY = sys.executable


def run(coro):
    return asyncio.run(coro)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    return ToolContext(spec_dir=spec_dir, workspace=tmp_path / "ws")


def py_tool(target: str, params=(), timeout=None, name="t") -> ToolSpec:
    return ToolSpec(name=name, params=tuple(params), kind="python", target=target,
                    returns_str=False, timeout_s=timeout)


def cmd_tool(argv, params=(), returns_str=True, timeout=None, cwd=None, name="c") -> ToolSpec:
    return ToolSpec(name=name, params=tuple(params), kind="command", target=tuple(argv),
                    returns_str=returns_str, timeout_s=timeout, cwd=cwd)


def fs_tool(builtin: str, params=("path", "content")) -> ToolSpec:
    return ToolSpec(name=builtin.replace(".", "_"), params=tuple(params), kind="builtin",
                    target=builtin, returns_str=builtin != "fs.list")


# ------------------------------------------------------------------------------------------
# Templates


class Mod(BaseModel):
    module_path: str
    tags: list[str]


@dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    "template, values, expected",
    [
        ("plain text", {}, "plain text"),
        ("", {}, ""),
        ("hi {name}!", {"name": "Ada"}, "hi Ada!"),
        ("{a.b.c}", {"a": {"b": {"c": "deep"}}}, "deep"),
        ("{xs[0]}-{xs[2]}", {"xs": ["a", "b", "c"]}, "a-c"),
        ("{a.b[1].c}", {"a": {"b": [{"c": 1}, {"c": "two"}]}}, "two"),
        ("{m[1][0]}", {"m": [[1], [2, 3]]}, "2"),
        ("{xs[-1]}", {"xs": ["a", "b", "c"]}, "c"),
        ("{ a . b [ 0 ] }", {"a": {"b": ["spaced"]}}, "spaced"),
        ("[{v}]", {"v": None}, "[]"),
        ("{a.b}", {"a": None}, ""),
        ("{a.b.c}", {"a": {"b": None}}, ""),
        ("{xs[3]}", {"xs": None}, ""),
        ("{v}", {"v": True}, "true"),
        ("{v}", {"v": False}, "false"),
        ("{v}", {"v": 42}, "42"),
        ("{v}", {"v": 1.5}, "1.5"),
        ("{v}", {"v": {"k": [1, "é", None]}}, '{"k":[1,"é",null]}'),
        ("{v}", {"v": ["a", "b"]}, '["a","b"]'),
        ("{v}", {"v": 'quote " and \\ stay'}, 'quote " and \\ stay'),
        ("{{literal}} {{{v}}}", {"v": "x"}, "{literal} {x}"),
        ("}}{{", {}, "}{"),
        ("{ v }", {"v": "spaced"}, "spaced"),
        ("{m.module_path} {m.tags[1]} {m}", {"m": Mod(module_path="a.py", tags=["x", "y"])},
         'a.py y {"module_path":"a.py","tags":["x","y"]}'),
        ("{p.y} {p}", {"p": Point(1, 2)}, '2 {"x":1,"y":2}'),
        ("{v} stays {v}", {"v": "{not_a_ref}"}, "{not_a_ref} stays {not_a_ref}"),
    ],
)
def test_render(template, values, expected):
    assert render_template(template, values) == expected


@pytest.mark.parametrize(
    "template, values, fragment",
    [
        ("{missing}", {}, "`missing`, which is not defined"),
        ("{a.nope}", {"a": {"b": 1}}, "`a` has no field `nope`"),
        ("{m.nope}", {"m": Mod(module_path="p", tags=[])}, "`m` has no field `nope`"),
        ("{xs[5]}", {"xs": [1, 2]}, "has only 2 item(s)"),
        ("{xs[-3]}", {"xs": [1, 2]}, "has only 2 item(s)"),
        ("{s[0]}", {"s": "text"}, "is a string, not a list"),
        ("{n.f}", {"n": 3}, "a number, which has no fields"),
        ("{a.b[0].c}", {"a": {"b": [{"d": 1}]}}, "`a.b[0]` has no field `c`"),
        ("{v}", {"v": {1, 2}}, "cannot render `v`"),
    ],
)
def test_render_runtime_errors(template, values, fragment):
    with pytest.raises(TemplateError) as info:
        render_template(template, values)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "template, fragment",
    [
        ("a { b", "`{` is never closed"),
        ("a } b", "`}` has no matching `{`"),
        ("{}", "an empty placeholder"),
        ('{"json": 1}', "is not a name"),
        ("{a.}", "is not a name"),
        ("{xs[1.5]}", "is not a name"),
        ("{xs[i]}", "is not a name"),
        ("{a b}", "is not a name"),
        ("{1abc}", "is not a name"),
    ],
)
def test_template_syntax_errors(template, fragment):
    with pytest.raises(TemplateError) as info:
        render_template(template, {"a": 1, "xs": [1], "b": 2})
    assert fragment in str(info.value)


def test_compiled_template_is_cached_and_exposes_refs():
    first = compile_template("x {a.b[2].c} {{y}} { d }")
    assert compile_template("x {a.b[2].c} {{y}} { d }") is first
    assert [r.path for r in first.refs] == [("a", "b", 2, "c"), ("d",)]
    assert [r.expr for r in first.refs] == ["a.b[2].c", "d"]
    assert first.refs[0].offset == 2


# ------------------------------------------------------------------------------------------
# Python tools


def test_python_sync_function_beside_spec_with_kwargs(ctx):
    write(ctx.spec_dir / "tools" / "text.py", """
        def count_words(text, minimum=0):
            return {"words": len(text.split()), "minimum": minimum}
    """)
    spec = py_tool("tools.text:count_words", ("text", "minimum"))
    assert run(call_tool(spec, {"minimum": 2, "text": "a b c"}, ctx)) == {"words": 3, "minimum": 2}
    # the default of the function applies when the argument is not given
    assert run(call_tool(spec, {"text": "one"}, ctx)) == {"words": 1, "minimum": 0}


def test_python_async_function(ctx):
    write(ctx.spec_dir / "atool.py", """
        import asyncio
        async def shout(text):
            await asyncio.sleep(0.01)
            return text.upper()
    """)
    assert run(call_tool(py_tool("atool:shout", ("text",)), {"text": "hey"}, ctx)) == "HEY"


def test_python_environment_import(ctx):
    spec = py_tool("json:dumps", ("obj", "sort_keys"))
    assert run(call_tool(spec, {"obj": {"b": 1, "a": [1, 2]}, "sort_keys": True}, ctx)) == \
        '{"a": [1, 2], "b": 1}'


def test_python_beside_spec_wins_and_does_not_pollute(tmp_path):
    # Two specs, each with its own tools/text.py, and one shadowing a stdlib module name.
    a = ToolContext(spec_dir=tmp_path / "a", workspace=tmp_path / "ws")
    b = ToolContext(spec_dir=tmp_path / "b", workspace=tmp_path / "ws")
    write(a.spec_dir / "tools" / "text.py", "def which():\n    return 'a'\n")
    write(b.spec_dir / "tools" / "text.py", "def which():\n    return 'b'\n")
    write(a.spec_dir / "json.py", "def dumps(obj):\n    return 'beside'\n")
    path_before = list(sys.path)
    spec = py_tool("tools.text:which")
    assert run(call_tool(spec, {}, a)) == "a"
    assert run(call_tool(spec, {}, b)) == "b"
    assert run(call_tool(py_tool("json:dumps", ("obj",)), {"obj": 1}, a)) == "beside"
    assert run(call_tool(py_tool("json:dumps", ("obj",)), {"obj": 1}, b)) == "1"
    assert sys.path == path_before
    assert "tools" not in sys.modules and "tools.text" not in sys.modules
    assert json.dumps([1]) == "[1]"


def test_python_package_beside_spec_with_relative_imports(ctx):
    write(ctx.spec_dir / "pkg" / "__init__.py", "PREFIX = 'p:'\n")
    write(ctx.spec_dir / "pkg" / "helpers.py", "def double(x):\n    return x * 2\n")
    write(ctx.spec_dir / "pkg" / "sub.py", """
        from . import PREFIX
        from .helpers import double
        def run(x):
            return PREFIX + str(double(x))
    """)
    inner = ctx.spec_dir / "nsdir" / "inner" / "__init__.py"  # nsdir has no __init__.py
    write(inner, "def f():\n    return 'package module'\n")
    assert run(call_tool(py_tool("pkg.sub:run", ("x",)), {"x": 21}, ctx)) == "p:42"
    assert run(call_tool(py_tool("nsdir.inner:f"), {}, ctx)) == "package module"


def test_python_converts_return_values(ctx):
    write(ctx.spec_dir / "conv.py", """
        from pydantic import BaseModel
        class Review(BaseModel):
            verdict: str
            scores: tuple[int, int]
        def model():
            return Review(verdict="PASS", scores=(1, 2))
        def nested():
            return {"t": (1, (2, 3)), 4: [Review(verdict="X", scores=(0, 0))]}
    """)
    assert run(call_tool(py_tool("conv:model"), {}, ctx)) == {"verdict": "PASS", "scores": [1, 2]}
    assert run(call_tool(py_tool("conv:nested"), {}, ctx)) == \
        {"t": [1, [2, 3]], "4": [{"verdict": "X", "scores": [0, 0]}]}


def test_python_non_serializable_return(ctx):
    write(ctx.spec_dir / "bad.py", """
        def a_set():
            return {1, 2}
        def nested():
            return {"ok": [1, object()]}
        def nan():
            return float("nan")
    """)
    with pytest.raises(ToolError, match=r"returned a set, which is not JSON-compatible"):
        run(call_tool(py_tool("bad:a_set"), {}, ctx))
    with pytest.raises(ToolError, match=r"returned a object at result\['ok'\]\[1\]"):
        run(call_tool(py_tool("bad:nested"), {}, ctx))
    with pytest.raises(ToolError, match="nan"):
        run(call_tool(py_tool("bad:nan"), {}, ctx))


def test_python_exception_becomes_tool_error(ctx):
    write(ctx.spec_dir / "boom.py", """
        def sync_boom(x):
            raise ValueError(f"bad value {x}")
        async def async_boom():
            raise KeyError("k")
        def flaky():
            raise ConnectionResetError("peer went away")
        def exits():
            raise SystemExit(3)
    """)
    with pytest.raises(ToolError) as info:
        run(call_tool(py_tool("boom:sync_boom", ("x",), name="boomer"), {"x": 7}, ctx))
    assert str(info.value) == "tool boomer raised ValueError: bad value 7"
    assert not isinstance(info.value, TransientToolError)
    assert "Traceback" not in str(info.value)
    with pytest.raises(ToolError, match="raised KeyError: 'k'"):
        run(call_tool(py_tool("boom:async_boom"), {}, ctx))
    with pytest.raises(TransientToolError, match="raised ConnectionResetError: peer went away"):
        run(call_tool(py_tool("boom:flaky"), {}, ctx))
    with pytest.raises(ToolError, match="raised SystemExit: 3"):
        run(call_tool(py_tool("boom:exits"), {}, ctx))


def test_python_tool_error_raised_by_tool_passes_through(ctx):
    write(ctx.spec_dir / "own.py", """
        from agentflow.runtime.tools import ToolError
        def f():
            raise ToolError("a message for the model")
    """)
    with pytest.raises(ToolError) as info:
        run(call_tool(py_tool("own:f"), {}, ctx))
    assert str(info.value) == "a message for the model"


def test_python_timeout_sync_and_async(ctx):
    write(ctx.spec_dir / "slow.py", """
        import asyncio, time
        def sync_slow():
            time.sleep(1.0)
            return "late"
        async def async_slow():
            await asyncio.sleep(10)
        def raises_timeout():
            raise TimeoutError("upstream timed out")
    """)
    start = time.monotonic()
    with pytest.raises(TransientToolError) as info:
        run(call_tool(py_tool("slow:async_slow", timeout=0.2, name="slowpoke"), {}, ctx))
    assert str(info.value) == "tool slowpoke timed out after 0.2s"
    with pytest.raises(TransientToolError, match="timed out after 0.2s"):
        run(call_tool(py_tool("slow:sync_slow", timeout=0.2), {}, ctx))
    assert time.monotonic() - start < 2.0
    # the function's own TimeoutError is reported as raised, not as our timeout
    with pytest.raises(TransientToolError, match="raised TimeoutError: upstream timed out"):
        run(call_tool(py_tool("slow:raises_timeout", timeout=5), {}, ctx))


def test_timeouts_of_many_calls_in_one_loop_each_hold_their_own(ctx):
    """Calls of several timeout lengths at once: each call that outlives its own timeout
    times out, on time; the others (shorter, or with longer timeouts) return their values;
    a call cancelled by someone else is cancelled, not timed out."""
    write(ctx.spec_dir / "mixed.py", """
        import asyncio, time
        async def nap(s: float):
            await asyncio.sleep(s)
            return s
        def doze(s: float):
            time.sleep(s)
            return s
    """)

    async def main():
        calls = [call_tool(py_tool("mixed:nap", ("s",), timeout=0.3), {"s": 5}, ctx),
                 call_tool(py_tool("mixed:doze", ("s",), timeout=0.3), {"s": 1}, ctx),
                 call_tool(py_tool("mixed:nap", ("s",), timeout=2), {"s": 0.6}, ctx),
                 call_tool(py_tool("mixed:nap", ("s",), timeout=0.3), {"s": 0.1}, ctx),
                 *(call_tool(py_tool("mixed:nap", ("s",)), {"s": 0.01 * (i % 5)}, ctx) for i in range(200))]
        start = time.monotonic()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - start
        stopped = asyncio.ensure_future(call_tool(py_tool("mixed:nap", ("s",), timeout=0.3), {"s": 5}, ctx))
        await asyncio.sleep(0.1)
        stopped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopped
        assert not asyncio.current_task().cancelling()
        return outcomes, elapsed

    outcomes, elapsed = run(main())
    assert [str(o) for o in outcomes[:2]] == ["tool t timed out after 0.3s"] * 2
    assert outcomes[2:4] == [0.6, 0.1]
    assert outcomes[4:] == [0.01 * (i % 5) for i in range(200)]
    assert elapsed < 2.0


def test_ended_calls_do_not_accumulate_under_a_long_timeout(ctx):
    """20,000 quick calls under the default 10-minute timeout: what their deadlines leave
    behind stays bounded, not one entry per call until the timeout passes."""
    import tracemalloc

    write(ctx.spec_dir / "quick.py", """
        async def f(i: int):
            return i
    """)
    spec = py_tool("quick:f", ("i",))

    async def main():
        tracemalloc.start()
        try:
            for i in range(20_000):
                assert await call_tool(spec, {"i": i}, ctx) == i
            snapshot = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        workers = tracemalloc.Filter(True, "*runtime/tools/workers.py")
        return sum(stat.size for stat in snapshot.filter_traces([workers]).statistics("filename"))

    assert run(main()) < 400_000  # ~2,000 deadlines at most; 20,000 would be over 2 MB


def test_blocking_sync_tools_run_side_by_side_off_the_event_loop(ctx):
    write(ctx.spec_dir / "blocking.py", """
        import threading, time
        def wait(i):
            time.sleep(0.4)
            return [i, threading.current_thread().name]
    """)
    spec = py_tool("blocking:wait", ("i",))

    async def main():
        ticks = 0

        async def ticker():  # the loop keeps running while the tools block their threads
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        beat = asyncio.ensure_future(ticker())
        results = await asyncio.gather(*(call_tool(spec, {"i": i}, ctx) for i in range(12)))
        beat.cancel()
        return results, ticks

    start = time.monotonic()
    results, ticks = run(main())
    assert [r[0] for r in results] == list(range(12))
    assert all(r[1] != "MainThread" for r in results)
    assert time.monotonic() - start < 2.0  # one after another would take 4.8 s
    assert ticks >= 4


def test_python_unresolvable(ctx):
    with pytest.raises(ToolError) as info:
        run(call_tool(py_tool("no_such_pkg.mod:f"), {}, ctx))
    message = str(info.value)
    assert "no_such_pkg.mod" in message and str(ctx.spec_dir.resolve()) in message
    assert "Python path" in message
    write(ctx.spec_dir / "has.py", "def g():\n    return 1\nVALUE = 3\n")
    with pytest.raises(ToolError, match="has no function nope"):
        run(call_tool(py_tool("has:nope"), {}, ctx))
    with pytest.raises(ToolError, match="is a int, not a function"):
        run(call_tool(py_tool("has:VALUE"), {}, ctx))
    with pytest.raises(ToolError, match="not of the form module.path:function"):
        run(call_tool(py_tool("has.g"), {}, ctx))
    write(ctx.spec_dir / "broken.py", "def f(:\n")
    with pytest.raises(ToolError, match=r"importing python module broken from .*SyntaxError"):
        run(call_tool(py_tool("broken:f"), {}, ctx))
    write(ctx.spec_dir / "needs.py", "import no_such_dependency_xyz\ndef f():\n    pass\n")
    with pytest.raises(ToolError, match="No module named 'no_such_dependency_xyz'"):
        run(call_tool(py_tool("needs:f"), {}, ctx))


def test_unknown_argument_refused(ctx):
    with pytest.raises(ToolError, match="got unknown argument.*bogus; it takes obj"):
        run(call_tool(py_tool("json:dumps", ("obj",)), {"obj": 1, "bogus": 2}, ctx))


def test_python_code_version_follows_the_source(ctx):
    source = write(ctx.spec_dir / "tools" / "ver.py", "def f():\n    return 1\n")
    spec = py_tool("tools.ver:f")
    v1 = tool_code_version(spec, ctx)
    assert tool_code_version(spec, ctx) == v1
    assert run(call_tool(spec, {}, ctx)) == 1
    # an edit of the same size within the same second still counts, and the new code runs
    source.write_text("def f():\n    return 2\n")
    v2 = tool_code_version(spec, ctx)
    assert v2 != v1
    assert run(call_tool(spec, {}, ctx)) == 2
    assert tool_code_version(py_tool("tools.ver:g"), ctx) != v2  # the function is part of it
    # environment modules are versioned by their file; unresolvable ones still get a version
    assert tool_code_version(py_tool("json:dumps"), ctx).startswith("python:")
    unresolved = tool_code_version(py_tool("nope_xyz:f"), ctx)
    assert unresolved != tool_code_version(py_tool("json:dumps"), ctx)


def test_command_and_builtin_code_versions(ctx):
    a = cmd_tool(["echo", "{x}"], ("x",))
    assert tool_code_version(a, ctx) == tool_code_version(cmd_tool(["echo", "{x}"], ("x",)), ctx)
    other = cmd_tool(["echo", "-n", "{x}"], ("x",))
    assert tool_code_version(a, ctx) != tool_code_version(other, ctx)
    assert tool_code_version(a, ctx) != tool_code_version(cmd_tool(["echo {x}"], ("x",)), ctx)
    assert tool_code_version(fs_tool("fs.read"), ctx) == "builtin:fs.read@1"
    assert tool_code_version(fs_tool("fs.read"), ctx) != tool_code_version(fs_tool("fs.write"), ctx)


# ------------------------------------------------------------------------------------------
# Command tools

ARGV_PRINTER = "import json, sys; print(json.dumps(sys.argv[1:]))"


def test_command_values_cannot_inject(ctx):
    victim = ctx.workspace / "x"
    victim.mkdir(parents=True)
    spec = cmd_tool([PY, "-c", ARGV_PRINTER, "--name={name}", "{name}", "{n}", "{obj}", "{none}"],
                    ("name", "n", "obj", "none"), returns_str=False)
    evil = '"; rm -rf x; echo $(whoami) `id` | cat > pwned'
    values = {"name": evil, "n": 3, "obj": {"a": [1, True]}, "none": None}
    result = run(call_tool(spec, values, ctx))
    assert result == ["--name=" + evil, evil, "3", '{"a":[1,true]}', ""]
    assert victim.is_dir() and not (ctx.workspace / "pwned").exists()


def test_command_returns_text_and_runs_in_workspace(ctx):
    spec = cmd_tool([PY, "-c", "import os; print(os.getcwd())"])
    assert run(call_tool(spec, {}, ctx)) == str(ctx.workspace.resolve()) + "\n"
    (ctx.workspace / "sub").mkdir()
    spec = cmd_tool([PY, "-c", "import os; print(os.getcwd(), end='')"], cwd="sub")
    assert run(call_tool(spec, {}, ctx)) == str((ctx.workspace / "sub").resolve())
    with pytest.raises(ToolError, match="working directory nope does not exist"):
        run(call_tool(cmd_tool([PY, "-c", "pass"], cwd="nope"), {}, ctx))
    with pytest.raises(ToolError, match="outside the workspace"):
        run(call_tool(cmd_tool([PY, "-c", "pass"], cwd=".."), {}, ctx))


def test_command_stdin_is_closed(ctx):
    spec = cmd_tool([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], timeout=5)
    assert run(call_tool(spec, {}, ctx)) == "''\n"


def test_command_json_output(ctx):
    # argv elements are templates: literal braces are doubled
    spec = cmd_tool([PY, "-c", "print('{{\"ok\": [1, 2]}}')"], returns_str=False)
    assert run(call_tool(spec, {}, ctx)) == {"ok": [1, 2]}
    bad = cmd_tool([PY, "-c", "print('this is not json at all')"], returns_str=False, name="jj")
    with pytest.raises(ToolError) as info:
        run(call_tool(bad, {}, ctx))
    assert "tool jj printed output that is not valid JSON" in str(info.value)
    assert "this is not json" in str(info.value)
    with pytest.raises(ToolError, match="printed nothing"):
        run(call_tool(cmd_tool([PY, "-c", "pass"], returns_str=False), {}, ctx))
    with pytest.raises(ToolError, match="not valid JSON"):
        run(call_tool(cmd_tool([PY, "-c", "print('NaN')"], returns_str=False), {}, ctx))


def test_command_nonzero_exit_carries_stderr(ctx):
    script = "import sys; sys.stderr.write('x' * 5000 + 'FAILED: 2 tests'); sys.exit(4)"
    with pytest.raises(ToolError) as info:
        run(call_tool(cmd_tool([PY, "-c", script], name="tests"), {}, ctx))
    err = info.value
    assert not isinstance(err, TransientToolError)
    assert err.exit_status == 4
    assert str(err).startswith("tool tests exited with status 4; stderr:\n")
    assert str(err).endswith("FAILED: 2 tests")
    assert len(err.stderr) == 2000
    with pytest.raises(ToolError, match=r"exited with status 1 \(no stderr output\)"):
        run(call_tool(cmd_tool([PY, "-c", "raise SystemExit(1)"]), {}, ctx))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie awaiting its reaper
    except FileNotFoundError:
        return True


def test_command_timeout_kills_the_process_group(ctx):
    pids = ctx.workspace / "pids"
    write(ctx.workspace / "sleeper.py", """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open("pids", "w").write("%d %d" % (os.getpid(), child.pid))
        time.sleep(30)
    """)
    start = time.monotonic()
    with pytest.raises(TransientToolError) as info:
        run(call_tool(cmd_tool([PY, "sleeper.py"], timeout=1, name="sleeper"), {}, ctx))
    assert str(info.value) == "tool sleeper timed out after 1s"
    assert time.monotonic() - start < 5
    leader, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 3
    while not (_gone(leader) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(leader) and _gone(child)


def test_command_cancelled_kills_the_process(ctx):
    write(ctx.workspace / "sleeper.py", """
        import os, time
        open("pid", "w").write(str(os.getpid()))
        time.sleep(30)
    """)

    async def scenario():
        task = asyncio.create_task(call_tool(cmd_tool([PY, "sleeper.py"]), {}, ctx))
        while not (ctx.workspace / "pid").exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    pid = int((ctx.workspace / "pid").read_text())
    assert _gone(pid)


def test_command_missing_executable(ctx):
    with pytest.raises(ToolError, match="executable not found: definitely-not-a-program-xyz"):
        run(call_tool(cmd_tool(["definitely-not-a-program-xyz", "a"]), {}, ctx))


def test_command_missing_argument_is_tool_error(ctx):
    with pytest.raises(ToolError, match="`x`, which is not defined"):
        run(call_tool(cmd_tool(["echo", "{x}"], ("x",)), {}, ctx))


# ------------------------------------------------------------------------------------------
# Builtins


def test_fs_round_trip(ctx):
    assert not ctx.workspace.exists()
    out = run(call_tool(fs_tool("fs.write"), {"path": "a/b.py", "content": "print('é')\n"}, ctx))
    assert out == "wrote 12 bytes to a/b.py"
    assert (ctx.workspace / "a" / "b.py").read_text() == "print('é')\n"
    assert run(call_tool(fs_tool("fs.read", ("path",)), {"path": "a/b.py"}, ctx)) == "print('é')\n"
    run(call_tool(fs_tool("fs.write"), {"path": "top.txt", "content": ""}, ctx))
    listing = fs_tool("fs.list", ("path",))
    assert run(call_tool(listing, {}, ctx)) == ["a/", "top.txt"]
    assert run(call_tool(listing, {"path": "a"}, ctx)) == ["a/b.py"]
    assert run(call_tool(listing, {"path": "a/../a/"}, ctx)) == ["a/b.py"]


def test_fs_params_map_by_position(ctx):
    writer = fs_tool("fs.write", ("file_name", "text"))
    run(call_tool(writer, {"file_name": "n.txt", "text": "hello"}, ctx))
    reader = fs_tool("fs.read", ("where",))
    assert run(call_tool(reader, {"where": "n.txt"}, ctx)) == "hello"
    assert run(call_tool(fs_tool("fs.list", ()), {}, ctx)) == ["n.txt"]


def test_fs_errors(ctx):
    reader = fs_tool("fs.read", ("path",))
    with pytest.raises(ToolError, match="no such file: missing.txt"):
        run(call_tool(reader, {"path": "missing.txt"}, ctx))
    (ctx.workspace / "d").mkdir()
    with pytest.raises(ToolError, match="d is a directory"):
        run(call_tool(reader, {"path": "d"}, ctx))
    with pytest.raises(ToolError, match="is a directory"):
        run(call_tool(fs_tool("fs.write"), {"path": "d", "content": "x"}, ctx))
    with pytest.raises(ToolError, match="no such directory"):
        run(call_tool(fs_tool("fs.list", ("path",)), {"path": "nope"}, ctx))
    with pytest.raises(ToolError, match="must be a string"):
        run(call_tool(fs_tool("fs.write"), {"path": "f", "content": {"a": 1}}, ctx))
    with pytest.raises(ToolError, match="unknown builtin"):
        run(call_tool(fs_tool("fs.delete", ("path",)), {"path": "f"}, ctx))


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() and not p.is_symlink() else "")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    "path", ["../escape.txt", "a/../../escape.txt", "new/dir/../../../escape.txt"]
)
def test_fs_refuses_dotdot(ctx, tmp_path, path):
    ctx.workspace.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(ToolError) as info:
        run(call_tool(fs_tool("fs.write"), {"path": path, "content": "x"}, ctx))
    assert str(info.value) == f"path {path} is outside the workspace"
    with pytest.raises(ToolError, match="outside the workspace"):
        run(call_tool(fs_tool("fs.read", ("path",)), {"path": path}, ctx))
    assert snapshot(tmp_path) == before


def test_fs_refuses_absolute_path(ctx, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    for spec, args in [
        (fs_tool("fs.read", ("path",)), {"path": str(outside)}),
        (fs_tool("fs.write"), {"path": str(outside), "content": "pwned"}),
        (fs_tool("fs.write"), {"path": str(tmp_path / "newdir" / "f.txt"), "content": "x"}),
        (fs_tool("fs.list", ("path",)), {"path": "/"}),
    ]:
        with pytest.raises(ToolError, match="outside the workspace"):
            run(call_tool(spec, args, ctx))
    assert outside.read_text() == "secret"
    assert not (tmp_path / "newdir").exists()


def test_fs_refuses_symlinks_pointing_outside(ctx, tmp_path):
    ctx.workspace.mkdir()
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    secret = outside_dir / "secret.txt"
    secret.write_text("secret")
    (ctx.workspace / "link.txt").symlink_to(secret)
    (ctx.workspace / "linkdir").symlink_to(outside_dir, target_is_directory=True)
    (ctx.workspace / "dangling").symlink_to(outside_dir / "not_yet.txt")
    before = snapshot(tmp_path)
    refused = [
        (fs_tool("fs.read", ("path",)), {"path": "link.txt"}),
        (fs_tool("fs.write"), {"path": "link.txt", "content": "pwned"}),
        (fs_tool("fs.read", ("path",)), {"path": "linkdir/secret.txt"}),
        (fs_tool("fs.write"), {"path": "linkdir/secret.txt", "content": "pwned"}),
        (fs_tool("fs.write"), {"path": "linkdir/new/deep.txt", "content": "x"}),
        (fs_tool("fs.write"), {"path": "dangling", "content": "x"}),
        (fs_tool("fs.list", ("path",)), {"path": "linkdir"}),
    ]
    for spec, args in refused:
        with pytest.raises(ToolError, match=f"path {args['path']} is outside the workspace"):
            run(call_tool(spec, args, ctx))
    assert secret.read_text() == "secret"
    assert snapshot(tmp_path) == before
    assert not (outside_dir / "new").exists() and not (outside_dir / "not_yet.txt").exists()
    # the links themselves are listed; a link that stays inside is followed
    (ctx.workspace / "real.txt").write_text("inside")
    (ctx.workspace / "inner_link").symlink_to(ctx.workspace / "real.txt")
    assert run(call_tool(fs_tool("fs.read", ("path",)), {"path": "inner_link"}, ctx)) == "inside"
    assert "link.txt" in run(call_tool(fs_tool("fs.list", ("path",)), {}, ctx))
