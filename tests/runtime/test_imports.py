"""The runtime's seam with the compiler: it reads plans through the schema, the IR and the
hashing module (and a few leaf modules that import nothing of the compiler proper), never the
lowering, the AST, the symbol table, the parser or diagnostics. So a Temporal worker's sandbox,
which re-imports the workflow's modules for every run, never loads the compiler or Lark."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import agentflow.compiler
import agentflow.runtime

COMPILER = "agentflow.compiler"
# The seam: what the runtime may import from the compiler.
SEAM = {"schema", "ir", "hashing"}
# Leaf modules the runtime shares with the compiler: values and names, no compiler passes.
LEAVES = {"errors", "names", "types", "templates", "source"}
ALLOWED = SEAM | LEAVES
# Where a run compiles the programs its models write (`run_program`): only inside the function
# that compiles, so importing these modules (the workflow imports local.py) loads no compiler.
COMPILES_PROGRAMS = {"local.py": {"programs"}, "temporal/activities.py": {"programs"}}


def imported_modules(path: Path, package: str, top_level: bool = False) -> set[str]:
    """Every module `path` imports (`top_level`: outside functions), relative imports resolved
    against its `package`; `from pkg import name` counts as importing `pkg.name` too (it may be
    a module)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in _outside_functions(tree) if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _outside_functions(tree: ast.AST):
    """The nodes of `tree` that are not inside a function."""
    for node in ast.iter_child_nodes(tree):
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _outside_functions(node)


def compiler_modules(imports: set[str]) -> set[str]:
    """The compiler's modules among `imports`, by their name in the package."""
    prefix = COMPILER + "."
    return {name[len(prefix):].split(".")[0] for name in imports if name.startswith(prefix)}


def package_files(package) -> list[tuple[Path, str]]:
    """(file, the package its relative imports resolve against) for each module of `package`."""
    root = Path(package.__file__).parent
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out.append((path, ".".join([package.__name__, *parts[:-1]])))
    return out


def test_the_runtime_imports_no_compiler_module_beyond_the_seam() -> None:
    found = {}
    for path, package in package_files(agentflow.runtime):
        name = str(path.relative_to(Path(agentflow.runtime.__file__).parent))
        modules = compiler_modules(imported_modules(path, package)) - COMPILES_PROGRAMS.get(name, set())
        modules |= compiler_modules(imported_modules(path, package, top_level=True))
        if modules - ALLOWED:
            found[name] = sorted(modules - ALLOWED)
    assert found == {}, f"runtime modules importing the compiler beyond {sorted(ALLOWED)}: {found}"


def test_the_modules_the_runtime_may_import_import_only_each_other() -> None:
    """Otherwise an allowed module would pull the rest of the compiler in behind the seam."""
    compiler_root = Path(agentflow.compiler.__file__).parent
    for name in sorted(ALLOWED):
        path = compiler_root / f"{name}.py"
        imports = imported_modules(path, COMPILER)
        assert compiler_modules(imports) <= ALLOWED, f"compiler/{name}.py imports {compiler_modules(imports) - ALLOWED}"
        assert not {"lark", "networkx"} & {m.split(".")[0] for m in imports}, f"compiler/{name}.py"


def test_the_check_sees_relative_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from ...compiler import plan\nfrom agentflow.compiler.ast import Call\n"
                      "import agentflow.compiler.symbols as s\nfrom agentflow.compiler import schema\n")
    assert compiler_modules(imported_modules(module, "agentflow.runtime.temporal")) - ALLOWED == {
        "plan", "ast", "symbols"}


def test_the_temporal_workflow_loads_neither_the_compiler_nor_lark() -> None:
    code = ("import json, sys\nimport agentflow.runtime.temporal.workflow\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('agentflow.compiler', 'lark')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert compiler_modules(loaded) <= ALLOWED, sorted(loaded)
    assert not {f"{COMPILER}.plan", f"{COMPILER}.parser", "lark"} & loaded
