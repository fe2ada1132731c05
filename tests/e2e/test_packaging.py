"""The wheel users install carries every source file of the package (an editable install
hides a missing one: it imports straight from the checkout)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLED_AS = {"agentflow": "agentflow", "compiler": "agentflow/compiler",
                "runtime": "agentflow/runtime", "grammar": "agentflow/grammar"}


def source_files() -> dict[str, Path]:
    """Every module and grammar of the source folders, by the name the wheel installs it as."""
    files = {}
    for folder, installed in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".lark", ".html", ".js", ".css") and "__pycache__" not in path.parts:
                files[f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"] = path
    return files


def test_the_wheel_ships_every_module_including_subpackages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("agentflow-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert "agentflow/runtime/temporal/workflow.py" in shipped
    assert "agentflow/runtime/ui/static/ui.js" in shipped  # the page of `agentflow ui`
    assert source_files().keys() - shipped == set()
    assert not [n for n in shipped if n.split("/")[0] in ("compiler", "runtime", "grammar", "tests")]



def test_the_type_checker_sees_every_module_where_it_installs():
    """mypy reads the checkout through .mypy-root (it cannot follow the editable install's
    import hook): every source file must appear there under its installed name."""
    layout = ROOT / ".mypy-root"
    assert {name for name, path in source_files().items()
            if path.suffix == ".py" and (layout / name).resolve() != path} == set()
