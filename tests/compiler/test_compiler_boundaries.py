"""Every boundary of the compiler holds: nesting at any depth, large files, files that are
not files, long paths, every line ending, separators and the parse errors people make.

Deep and large specs are generated in tmp_path; exit codes and "no traceback" are checked on
the real `agentflow` CLI in subprocesses, diagnostics through the library."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentflow.compiler.diagnostics import Diagnostic
from agentflow.compiler.parser import MAX_NESTING, MAX_OPEN
from agentflow.compiler.pipeline import MAX_SOURCE_BYTES, compile_source, read_source
from agentflow.compiler.source import SourceFile

from runtime_support import af, ok

ROLE = 'role r { model = "scripted"\n  task t(x: int) -> int { prompt = "x" }\n}\n'


def diagnostics(text: str) -> list[Diagnostic]:
    return list(compile_source(SourceFile("spec.agentflow", text)).diagnostics)


def codes(text: str) -> list[str]:
    return [d.code for d in diagnostics(text)]


def compiles(text: str) -> bool:
    return compile_source(SourceFile("spec.agentflow", text)).ok


# ---------------------------------------------------------------- nesting: generators

def list_type(n: int) -> str:
    return "list[" * n + "int" + "]" * n


def task_returning(type_: str, decls: str = "") -> str:
    return (f'{decls}role q {{ model = "scripted"\n  task t() -> {type_} {{ prompt = "x" }}\n}}\n'
            f"choreography main() -> {type_} {{ return q.t() }}\n")


def record_chain(n: int) -> str:
    """T0 holds T1 ... holds Tn: n + 1 record levels, returned by a task."""
    decls = "".join(f"type T{i} {{ x: T{i + 1} }}\n" for i in range(n)) + f"type T{n} {{ x: int }}\n"
    return task_returning("T0", decls)


def choreography_chain(n: int, body: str = "y = c{next}(x)\n  return y") -> str:
    """main calls c0, which calls c1 ... cn, which calls the task: each body inlined in its caller."""
    links = "".join(f"choreography c{i}(x: int) -> json {{\n  {body.format(next=i + 1)}\n}}\n" for i in range(n))
    return (ROLE + links + f"choreography c{n}(x: int) -> json {{ return r.t(x) }}\n"
            "choreography main() -> json { return c0(1) }\n")


def nested_for(n: int) -> str:
    body = "r.t(1)"
    for i in range(n):
        body = f"for v{i} in [1] {{ y = {body}\n yield y }}"
    return ROLE + f"choreography main() -> json {{\n  z = {body}\n  return z\n}}\n"


def expression(inner: str) -> str:
    return ROLE + f"choreography main() -> json {{\n  x = r.t(1)\n  return {inner}\n}}\n"


# Each shape at a depth n; the deepest n the compiler accepts must also run.
SHAPES = {
    "list type": lambda n: task_returning(list_type(n)),
    "optional type": lambda n: task_returning("int" + "?" * n),
    "record chain": record_chain,
    "choreography chain": choreography_chain,
    "choreography chain through for": lambda n: choreography_chain(
        n, "y = for v in [x] {{ z = c{next}(v)\n yield z }}\n  return y"),
    "nested for": nested_for,
    "nested list literal": lambda n: expression("[" * n + "x" + "]" * n),
    "nested record literal": lambda n: expression("{a: " * n + "x" + "}" * n),
    "a + a + ...": lambda n: expression("x" + " + x" * n),
    "negations": lambda n: expression("-" * n + "x"),
}


def deepest_accepted(shape) -> int:
    """The largest depth at which `shape` compiles (binary search: compiling is monotone)."""
    lo, hi = 1, 4 * MAX_NESTING
    assert compiles(shape(lo)) and not compiles(shape(hi))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if compiles(shape(mid)) else (lo, mid - 1)
    return lo


# ---------------------------------------------------------------- nesting: tests

@pytest.mark.parametrize("name", SHAPES)
def test_one_level_past_the_deepest_accepted_is_e003(name: str) -> None:
    shape = SHAPES[name]
    depth = deepest_accepted(shape)
    assert depth >= MAX_NESTING // 2 - 2, "the limit is not much lower than documented"
    found = diagnostics(shape(depth + 1))
    assert found and {d.code for d in found} == {"E003"}, found
    assert all(f"more than {MAX_NESTING} levels deep" in d.message and d.help for d in found)


@pytest.mark.parametrize("name", ["list type", "record chain", "choreography chain through for", "nested for",
                                  "nested record literal"])
def test_the_deepest_accepted_program_runs(tmp_path: Path, name: str) -> None:
    shape = SHAPES[name]
    spec = tmp_path / "deep.agentflow"
    spec.write_text(shape(deepest_accepted(shape)))
    ok(af(tmp_path, "run", str(spec), "--model", "scripted", timeout=300))


@pytest.mark.parametrize("depth", [985, 10_000])
@pytest.mark.parametrize("text", [
    lambda n: task_returning(list_type(n)),
    lambda n: task_returning("str" + "?" * n),
    record_chain,
    lambda n: choreography_chain(n, "return c{next}(x)"),
    lambda n: expression("x" + " + x" * (10 * n)),
    lambda n: expression("[" * n + "x" + "]" * n),
    lambda n: expression("{a: " * n + "x" + "}" * n),
], ids=["list", "optional", "records", "choreographies", "sum", "list literal", "record literal"])
def test_the_cli_reports_deep_nesting_as_e003_at_any_depth(tmp_path: Path, text, depth: int) -> None:
    spec = tmp_path / "deep.agentflow"
    spec.write_text(text(depth))
    result = ok(af(tmp_path, "compile", str(spec), timeout=120), 1)
    assert "error[E003]" in result.stderr


def test_parentheses_add_no_nesting_level(tmp_path: Path) -> None:
    spec = tmp_path / "parens.agentflow"
    spec.write_text(expression("(" * (MAX_OPEN // 2) + "x" + ")" * (MAX_OPEN // 2)))
    assert ok(af(tmp_path, "run", str(spec), "--model", "scripted", timeout=120)).stdout.strip() != ""
    (found,) = diagnostics(expression("(" * 100_000 + "x" + ")" * 100_000))
    assert (found.code, found.message) == ("E003", f"more than {MAX_OPEN} brackets and constructs open at once")


def test_nesting_errors_point_at_the_deep_part() -> None:
    (deep,) = diagnostics(record_chain(2 * MAX_NESTING))
    assert deep.message == (f"type nested more than {MAX_NESTING} levels deep, counting the fields of its "
                            "record types")
    assert deep.primary.message == f"`T0` has fields nested {2 * MAX_NESTING + 1} levels deep"
    (chain,) = diagnostics(choreography_chain(2 * MAX_NESTING, "return c{next}(x)"))
    assert chain.message.startswith(f"choreography `main` nests more than {MAX_NESTING} levels deep")
    assert chain.primary.span.line == 3 * 2 * MAX_NESTING + 5  # `c0(1)` in main, the last line


def test_recursive_record_types_have_no_depth_of_their_own() -> None:
    tree = "type Tree { value: int, children: list[Tree] }\n"
    assert compiles(task_returning("Tree", tree))


# ---------------------------------------------------------------- size and kind of file

def compile_measured(spec: Path) -> tuple[int, int, float]:
    """(exit code, peak memory in bytes, seconds) of `agentflow compile spec`, measured by
    a process of its own, whose only child is that compile."""
    measure = ("import resource, subprocess, sys, time\n"
               "start = time.monotonic()\n"
               "code = subprocess.run([sys.executable, '-m', 'agentflow', 'compile', sys.argv[1]],\n"
               "                      stderr=subprocess.DEVNULL).returncode\n"
               "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "print(code, kb * 1024, time.monotonic() - start)\n")
    out = subprocess.run([sys.executable, "-c", measure, str(spec)], capture_output=True, text=True, timeout=120)
    code, peak, seconds = out.stdout.split()
    return int(code), int(peak), float(seconds)


def spec_of_size(path: Path, head: bytes, filler: bytes, tail: bytes) -> int:
    """Writes head, filler repeated, tail: just under the size limit. Returns the size."""
    path.write_bytes(head + filler * ((MAX_SOURCE_BYTES - len(head) - len(tail)) // len(filler)) + tail)
    return path.stat().st_size


@pytest.mark.parametrize("head, filler, tail, expected_exit", [
    (b'choreography main() -> str { return "', b"a", b'" }\n', 0),
    (b"choreography main() -> int { return ", b"(", b" }\n", 1),
], ids=["one string literal", "open parentheses"])
def test_a_10_mb_spec_compiles_in_linear_time_and_memory(tmp_path: Path, head: bytes, filler: bytes, tail: bytes,
                                                        expected_exit: int) -> None:
    spec = tmp_path / "big.agentflow"
    size = spec_of_size(spec, head, filler, tail)
    code, peak, seconds = compile_measured(spec)
    assert code == expected_exit
    assert peak <= 20 * size, f"peak memory {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
    assert seconds < 20


def test_a_string_of_escapes_is_read_in_linear_time() -> None:
    body = '\\\\n\\"\\t' * 600_000  # 4.8 MB, 1.8 million escapes: `\\` then `n`, `\"`, `\t`
    start = time.monotonic()
    result = compile_source(SourceFile("s.agentflow", f'choreography main() -> str {{ return "{body}" }}'))
    assert time.monotonic() - start < 3
    (decl,) = result.program.decls
    assert decl.body.statements[0].value.value == '\\n"\t' * 600_000


def test_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    result = ok(af(tmp_path, "compile", "/dev/zero", timeout=30), 2)
    assert "/dev/zero: not a regular file" in result.stderr


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.agentflow"
    os.mkfifo(fifo)
    result = ok(af(tmp_path, "compile", str(fifo), timeout=30), 2)
    assert "not a regular file" in result.stderr


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("path, words", [
    ("x" * 256 + ".agentflow", "path too long"),
    ("spec.agentflow/inner.agentflow", "no such file"),  # a path through a file
    ("loop.agentflow", "cannot read it"),                 # a symbolic link to itself
    ("/proc/self/mem", "cannot read it (Input/output error)"),  # opens, then fails to read
])
def test_unreadable_paths_are_usage_errors(tmp_path: Path, path: str, words: str) -> None:
    (tmp_path / "spec.agentflow").write_text(ROLE)
    (tmp_path / "loop.agentflow").symlink_to(tmp_path / "loop.agentflow")
    result = ok(af(tmp_path, "compile", str(tmp_path / path)), 2)
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_a_usage_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.agentflow"
    spec.write_text(ROLE)
    spec.chmod(0)
    result = ok(af(tmp_path, "compile", str(spec)), 2)
    assert "permission denied" in result.stderr


# ---------------------------------------------------------------- line endings

UNDEFINED_NAME = """\
# a comment
choreography main() -> int {
  a = 1
  return b
}
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_ends_a_line(tmp_path: Path, newline: str) -> None:
    spec = tmp_path / "spec.agentflow"
    spec.write_bytes(UNDEFINED_NAME.replace("\n", newline).encode())
    (found,) = compile_source(read_source(spec)).diagnostics
    assert (found.code, found.primary.span.line, found.primary.span.column) == ("E101", 4, 10)
    result = ok(af(tmp_path, "compile", str(spec)), 1)
    assert "4 |   return b\n" in result.stderr
    spec.write_bytes(UNDEFINED_NAME.replace("return b", "return a").replace("\n", newline).encode())
    assert ok(af(tmp_path, "run", str(spec), "--model", "scripted")).stdout.strip() == "1"


def test_multiline_strings_read_the_same_with_every_line_ending() -> None:
    text = 'choreography main() -> str {\n  return """\n    one\n    two\n  """\n}\n'
    plans = {nl: compile_source(SourceFile("s", text.replace("\n", nl))).plan.to_json() for nl in ["\n", "\r\n", "\r"]}
    assert len(set(plans.values())) == 1
    assert '"one\\ntwo"' in plans["\n"]


# ---------------------------------------------------------------- separators

@pytest.mark.parametrize("text", [
    "type P { a: int, b: int }",
    "type P { a: int; b: int }",
    "type P { a: int\n b: int, }",
    "type P {\n  a: int,\n  b: list[int],\n}",
])
def test_commas_semicolons_and_newlines_separate_fields(text: str) -> None:
    spec = text + "\nchoreography main(p: P) -> int { return p.a }\n"
    assert compiles(spec), codes(spec)


def test_commas_separate_attributes_and_statements() -> None:
    spec = textwrap.dedent("""\
        defaults { model = "scripted", retries = 1, }
        role r { system = "s", task t(x: int) -> int { prompt = "x", retries = 0 }, }
        choreography main() -> int { a = r.t(1), b = r.t(2) after a; return a + b }
        """)
    assert compiles(spec), codes(spec)


def test_a_statement_after_an_after_list_and_a_comma_says_to_end_the_list() -> None:
    spec = ROLE + "choreography main() -> int { a = r.t(1)\n b = r.t(2) after a, c = r.t(3)\n return c }\n"
    (found,) = diagnostics(spec)
    assert (found.code, found.primary.span.line, found.primary.span.column) == ("E001", 5, 24)
    assert found.help == "an `after` list takes every name that follows a `,`: end it with `;` or a new line"
    assert compiles(spec.replace("after a, c", "after a; c")) and compiles(spec.replace("after a, c", "after a\n c"))


@pytest.mark.parametrize("text", [
    "type P { a: int,, b: int }",
    "type P { , }",
    "choreography main(a: int,,) -> int { return a }",
    "choreography main() -> int { return [1,, 2] }",
    "defaults { , }",
])
def test_an_unexpected_comma_is_never_reported_as_expected(text: str) -> None:
    (found,) = diagnostics(text)
    assert found.code == "E001"
    assert found.message.startswith("unexpected `,`, expected ")
    assert "`,`" not in found.message.removeprefix("unexpected `,`, expected ")


# ---------------------------------------------------------------- parse errors that say what is wrong

def test_single_equals_in_a_condition_suggests_double() -> None:
    spec = ROLE + 'choreography main() -> json {\n  x = repeat max 3 until x = "PASS" {\n    y = r.t(1)\n  }\n  return x\n}\n'
    (found,) = diagnostics(spec)
    assert (found.code, found.primary.span.line, found.primary.span.column) == ("E001", 5, 28)
    assert "`==`" in found.help


def test_an_unclosed_brace_is_pointed_at() -> None:
    spec = "choreography main() -> int {\n  a = [1, 2]\n  return a\n\n"
    (found,) = diagnostics(spec)
    assert found.message.startswith("unexpected end of file")
    assert (found.primary.span.line, found.primary.span.column, found.primary.message) == (3, 11, "the file ends here")
    (brace,) = found.secondary
    assert (brace.span.line, brace.span.column, brace.message) == (1, 28, "this `{` is never closed")
    assert found.help == "close it with `}`"


def test_the_innermost_unclosed_bracket_is_the_one_pointed_at() -> None:
    (found,) = diagnostics("choreography main() -> json {\n  return {a: [1, (2\n")
    (bracket,) = found.secondary
    assert (bracket.span.line, bracket.span.column, bracket.message) == (2, 18, "this `(` is never closed")


@pytest.mark.parametrize("value, shown", [("2 minutes", "`2m`"), ("2min", "`2m`"), ("30 sec", "`30s`"),
                                          ("5 h", "`5h`"), ("3xyz", "`2m`")])
def test_a_misspelt_duration_says_how_durations_are_written(value: str, shown: str) -> None:
    spec = f'role r {{ model = "scripted"\n  timeout = {value}\n  task t() -> str {{ prompt = "x" }}\n}}\n'
    (found,) = diagnostics(spec)
    assert found.code == "E001"
    assert found.help == f"a duration is an integer followed by `ms`, `s`, `m` or `h`, with no space: {shown}"


def test_no_parse_error_ends_in_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "spec.agentflow"
    spec.write_text('role r {\n  timeout = 2min\n')
    result = ok(af(tmp_path, "compile", str(spec)), 1)
    assert "error[E001]: `2min` is neither a number nor a duration" in result.stderr
