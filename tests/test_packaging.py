"""The wheel users install carries every source file of the package (an editable install
hides a missing one: it imports straight from the checkout)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLED_AS = {"agentflow": "agentflow", "compiler": "agentflow/compiler",
                "runtime": "agentflow/runtime", "grammar": "agentflow/grammar"}


def source_files() -> set[str]:
    """Every module and grammar of the source folders, named as the wheel installs them."""
    names = set()
    for folder, installed in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".lark") and "__pycache__" not in path.parts:
                names.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return names


def test_the_wheel_ships_every_module_including_subpackages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("agentflow-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert "agentflow/runtime/temporal/workflow.py" in shipped
    assert source_files() - shipped == set()
    assert not [n for n in shipped if n.split("/")[0] in ("compiler", "runtime", "grammar", "tests")]
