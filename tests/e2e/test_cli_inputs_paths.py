"""Every boundary of `agentflow run` holds: inputs that are no JSON value (infinities, NaN,
lone surrogates, nesting too deep), unusable `--db` and `--workspace` paths, and `--force`
patterns in the notation `--dry-run` prints. A rejected invocation exits 2 with one line
on stderr and leaves every file as it was. Real subprocesses, a real DuckDB file."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from runtime_support import DB, TESTS, af, ok, ran, reused, runs, show, write

SPEC = """
defaults { model = "scripted" }

role a {
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography main(s: str, j: json = null, f: float = 1.0) -> json {
  r = a.t(s)
  return {r: r, j: j, f: f}
}
"""
LONG = "x" * 256  # one byte over the longest file name Linux allows
MAX_DEPTH = 100  # the documented nesting limit of an input value


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A flow that has run once (so a database exists to be kept intact), and input files."""
    root = tmp_path_factory.mktemp("project")
    write(root / "flow.agentflow", SPEC)
    write(root / "inf.json", '{"s": "x", "f": 1e999}')
    write(root / "nan.json", '{"s": "x", "j": {"a": [NaN]}}')
    write(root / "surrogate.json", '{"s": "\\ud800"}')
    write(root / "surrogate_value.json", '"a\\udfffb"')
    write(root / "long_int.json", "1" * 5000)
    for depth in (MAX_DEPTH + 1, 1_000, 100_000):
        write(root / f"deep{depth}.json", nested(depth))
        write(root / f"inputs_deep{depth}.json", f'{{"s": "x", "j": {nested(depth)}}}')
    write(root / "afile", "not a directory\n")
    write(root / "notes.txt", "my notes, not a database\n" * 200)
    (root / "adir").mkdir()
    ok(af(root, "run", "flow.agentflow", "--input", "s=x"))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: a file's content hash, or `dir`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def rejected(root: Path, *args: str, says: tuple[str, ...]) -> str:
    """Runs `agentflow ARGS`, which must exit 2 with one line naming `says`, touching nothing."""
    before = snapshot(root)
    result = ok(af(root, *args), 2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in says:
        assert text in lines[0], lines[0]
    assert result.stdout == ""
    assert snapshot(root) == before, "a rejected invocation changed or created files"
    return lines[0]


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize("args, says", [
    (["--input", "s=x", "--input", "f=1e999"], ("`f`", "JSON")),
    (["--input", "s=x", "--input", "j=1e999"], ("`j`", "JSON")),
    (["--input", "s=x", "--input", "j=-Infinity"], ("`j`", "JSON")),
    (["--inputs", "inf.json"], ("`f`", "JSON")),
    (["--inputs", "nan.json"], ("`j`", "JSON")),
    (["--inputs", "surrogate.json"], ("`s`", "surrogate")),
    (["--input", "s=x", "--input", 'j="\\ud800"'], ("`j`", "surrogate")),
    (["--input", "s=x", "--input", "j=@surrogate_value.json"], ("`j`", "surrogate")),
    (["--input", "s=x", "--input", "j=@long_int.json"], ("`j`", "digits")),
    (["--input", "s=x", "--input", f"j=@deep{MAX_DEPTH + 1}.json"], ("`j`", f"{MAX_DEPTH} deep")),
    (["--input", "s=x", "--input", "j=@deep1000.json"], ("`j`", f"{MAX_DEPTH} deep")),
    (["--input", "s=x", "--input", "j=@deep100000.json"], ("`j`", f"{MAX_DEPTH} deep")),
    (["--inputs", f"inputs_deep{MAX_DEPTH + 1}.json"], ("`j`", f"{MAX_DEPTH} deep")),
    (["--inputs", "inputs_deep1000.json"], ("inputs_deep1000.json", f"{MAX_DEPTH} deep")),
    (["--inputs", "inputs_deep100000.json"], ("inputs_deep100000.json", f"{MAX_DEPTH} deep")),
    (["--input", "s=x", "--input", "j=@missing.json"], ("missing.json", "does not exist")),
    (["--input", "s=x", "--input", "j=@adir"], ("adir", "directory")),
    (["--input", "s=@adir"], ("adir", "directory")),
])
def test_inputs_that_are_no_json_value_exit_2_naming_them(project, args, says):
    assert "database" not in rejected(project, "run", "flow.agentflow", *args, says=says)


def test_an_input_nested_to_the_limit_runs(project):
    value = json.loads(nested(MAX_DEPTH))
    result = ok(af(project, "run", "flow.agentflow", "--input", "s=x", "--input", f"j={nested(MAX_DEPTH)}"))
    assert json.loads(result.stdout)["j"] == value


def test_an_inputs_file_with_a_byte_order_mark_runs(project):
    """Editors on Windows start UTF-8 files with one."""
    (project / "bom.json").write_bytes(b'\xef\xbb\xbf{"s": "x", "j": [1]}')
    result = ok(af(project, "run", "flow.agentflow", "--inputs", "bom.json"))
    assert json.loads(result.stdout)["j"] == [1]


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize("args, says", [
    (["--db", f"{LONG}/a.duckdb"], ("--db", "255 bytes")),
    (["--db", f"new/{LONG}.duckdb"], ("--db", "255 bytes")),  # and `new` is not made
    (["--db", "adir"], ("--db", "adir", "directory")),
    (["--db", "afile/x/y.duckdb"], ("--db", "afile", "not a directory")),
    (["--workspace", LONG], ("--workspace", "255 bytes")),
    (["--workspace", f"new/{LONG}/w"], ("--workspace", "255 bytes")),
    (["--workspace", "afile"], ("--workspace", "afile", "not a directory")),
    (["--workspace", "afile/w"], ("--workspace", "afile", "not a directory")),
])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_unusable_paths_exit_2_before_anything_runs(project, args, says, dry_run):
    rejected(project, "run", "flow.agentflow", "--input", "s=x", *dry_run, *args, says=says)


@pytest.mark.parametrize("db, says", [
    (f"{LONG}/a.duckdb", ("--db", "255 bytes")),
    ("adir", ("--db", "adir", "directory")),
    ("afile/x.duckdb", ("--db", "afile", "not a directory")),
])
@pytest.mark.parametrize("command", [["runs"], ["show", "20260101-000000-abcdef"],
                                     ["graph", "flow.agentflow", "--run", "20260101-000000-abcdef"]],
                         ids=["runs", "show", "graph"])
def test_history_commands_reject_unusable_db_paths(project, command, db, says):
    rejected(project, *command, "--db", db, says=says)


@pytest.mark.parametrize("command", [["runs"], ["show", "20260101-000000-abcdef"],
                                     ["run", "flow.agentflow", "--input", "s=x"]],
                         ids=["runs", "show", "run"])
def test_a_db_that_is_not_a_database_is_rejected_leaving_no_lock_files(project, command):
    """Its `.lock` and `.wait` files are made by the open that fails: it removes them."""
    rejected(project, *command, "--db", "notes.txt", says=("notes.txt", "not a DuckDB database"))


# ------------------------------------------------------------------ --force


@pytest.fixture
def built(tmp_path) -> Path:
    """specs/build_project.agentflow, run once: every node stored."""
    shutil.copy(TESTS.parent / "specs" / "build_project.agentflow", tmp_path / "build.agentflow")
    ok(af(tmp_path, "run", "build.agentflow", "--input", "project_spec=x"))
    return tmp_path


def forced_run(cwd: Path, *patterns: str) -> dict[str, dict]:
    """Runs the stored flow again with these `--force` patterns; its nodes as `show --json` has them."""
    args = [a for p in patterns for a in ("--force", p)]
    ok(af(cwd, "run", "build.agentflow", "--input", "project_spec=x", *args))
    return show(cwd, runs(cwd, cli=True)[0]["run_id"], cli=True)


def calls(node_ids, *names: str) -> set[str]:
    """The model calls among `node_ids` (not the `for` and `repeat` around them), of these names."""
    return {n for n in node_ids if n.rsplit("/", 1)[-1] in (names or ("plan", "code", "review"))}


def test_force_takes_the_template_ids_dry_run_prints(built):
    nodes = forced_run(built, "main/reviews[*]/attempt#*/review")
    assert len(calls(nodes, "review")) > 3  # every item, and more than one attempt of some
    assert calls(ran(nodes)) == calls(nodes, "review")
    assert calls(reused(nodes)) == calls(nodes, "plan", "code")


def test_force_takes_a_binding_name(built):
    nodes = forced_run(built, "plan")
    assert calls(ran(nodes)) == {"main/plan"}  # the same plan again: nothing downstream re-runs
    assert calls(reused(nodes)) == calls(nodes, "code", "review")
    nodes = forced_run(built, "review")  # a name anywhere in the flow
    assert calls(ran(nodes)) == calls(nodes, "review")


def test_force_takes_an_item_and_everything_inside_it(built):
    nodes = forced_run(built, "main/reviews[1]")
    assert calls(ran(nodes)) == {n for n in calls(nodes) if n.startswith("main/reviews[1]/")}
    nodes = forced_run(built, "main/reviews[*]/attempt#1/code", "main/reviews[0]/attempt#2/review")
    assert calls(ran(nodes)) == \
        {n for n in calls(nodes, "code") if "/attempt#1/" in n} | {"main/reviews[0]/attempt#2/review"}
    nodes = forced_run(built, "main/*/code")  # globs still work
    assert calls(ran(nodes)) == calls(nodes, "code")


@pytest.mark.parametrize("pattern, nearest", [
    ("main/reveiws[*]/attempt#*/review", "main/reviews[*]/attempt#*/review"),
    ("plna", "plan"),
    ("main/plan/x", "main/plan"),
])
def test_a_force_pattern_matching_no_node_exits_2_with_the_nearest_ids(built, pattern, nearest):
    rejected(built, "run", "build.agentflow", "--input", "project_spec=x", "--force", pattern,
             says=(pattern, nearest))


@pytest.mark.parametrize("args", [
    ["run", "flow.agentflow", "--input", "s=\udcff"],  # Python reads the byte 0xff as U+DCFF
    ["run", "flow.agentflow", "--input", "s=x", "--db", "\udcff.duckdb"],
    ["run", "flow.agentflow", "--input", "s=x", "--model", "scripted\udcff"],
    ["run", "flow.agentflow", "--input", "s=x", "--resume", "\udcff"],
    ["run", "\udcff.agentflow", "--input", "s=x"],
    ["show", "\udcff"],
], ids=["input", "db", "model", "resume", "file", "show"])
def test_a_command_line_byte_that_is_not_utf8_exits_2(project, args):
    assert "database" not in rejected(project, *args, says=("\\udcff", "UTF-8"))


@pytest.mark.parametrize("output, says", [
    ("nodir/g.md", "No such file or directory"),
    ("afile/g.md", "Not a directory"),
    (LONG, "File name too long"),
])
def test_graph_output_that_cannot_be_written_exits_2(project, output, says):
    rejected(project, "graph", "flow.agentflow", "-o", output, says=("-o", output, says))
