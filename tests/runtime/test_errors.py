"""One error root: every exception a user can meet is an AgentflowError with its exit code,
and the CLI prints each as `error: <message>` with that code (LANGUAGE.md section 6).

The classes are found by walking the package's modules, so a new exception class has to
join the family or be named here as control flow that never reaches the CLI."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import agentflow.compiler
import agentflow.runtime
from agentflow.compiler import errors
from agentflow.compiler.errors import AgentflowError

from runtime_support import DB, af, last_run, ok, write

# Control flow inside the compiler or the engine: caught and turned into a diagnostic, a
# node's recorded failure or the run's outcome before the CLI sees anything.
INTERNAL = {"NestingTooDeep", "NodeFailure", "NodeWaiting", "RunAborted", "DryRunStop", "ModelError", "TransientModelError",
            "ToolError", "TransientToolError", "TemplateError", "ExpressionError", "BlobMissing",
            "SpawnError", "ToolInterrupted", "TypeMismatch", "NotPlain", "ExitWithoutTeardown", "ValueTooLarge"}
EXIT_CODES = {"SourceError": 2, "InputError": 2, "ResumeError": 2, "CredentialError": 2, "StoreError": 2,
              "StoreLocked": 2, "StoreSchemaError": 2, "StoreNotADatabase": 2, "StoreEmpty": 2, "TemporalError": 2,
              "UsageError": 2, "AnswerError": 2, "NotAnswerable": 2, "NotFound": 2, "RunFailed": 3,
              "CompileError": 1}


def _modules():
    for package in (agentflow.compiler, agentflow.runtime):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)
    yield importlib.import_module("agentflow.cli")
    yield importlib.import_module("agentflow.api")


def _exception_classes() -> dict[str, type]:
    """Every exception class defined in the package, by name."""
    found = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                assert name not in found, f"two exception classes named {name}"
                found[name] = obj
    return found


CLASSES = _exception_classes()


def test_every_exception_class_is_a_user_error_or_named_control_flow():
    user = {name for name, cls in CLASSES.items() if issubclass(cls, AgentflowError)}
    assert set(CLASSES) - user == INTERNAL
    assert user == set(EXIT_CODES) | {"AgentflowError"}


@pytest.mark.parametrize("name, code", sorted(EXIT_CODES.items()))
def test_exit_code_per_class(name, code):
    assert CLASSES[name].exit_code == code


def test_the_hierarchy_in_the_module_docstring_names_every_class():
    named = set(re.findall(r"\b[A-Z]\w+", errors.__doc__))
    assert set(CLASSES) <= named


SPEC = """
role r {
  model = "scripted:script.json"
  retries = 0
  task t(x: str) -> str { prompt = "T {x}" }
}

choreography main(topic: str) -> str {
  return r.t(topic)
}
"""


@pytest.fixture
def flow(tmp_path):
    write(tmp_path / "flow.agentflow", SPEC)
    write(tmp_path / "script.json", '{"rules": [{"contains": "boom", "error": "server", "message": "it broke"}]}')
    return tmp_path


def test_exit_2_a_spec_that_cannot_be_read(tmp_path):
    result = ok(af(tmp_path, "compile", "missing.agentflow"), 2)
    assert result.stdout == ""
    assert result.stderr == "error: missing.agentflow: no such file\n"


def test_exit_2_resume_of_a_run_that_is_not_there(flow):
    result = ok(af(flow, "run", "flow.agentflow", "--input", "topic=x", "--resume", "nosuch"), 2)
    assert result.stdout == ""
    assert result.stderr == f"error: there is no run nosuch in {DB}; `agentflow runs` lists them\n"


def test_exit_3_a_failed_node(flow):
    result = ok(af(flow, "run", "flow.agentflow", "--input", "topic=boom"), 3)
    run_id = last_run(flow)["run_id"]
    assert result.stdout == ""
    assert result.stderr.endswith(
        f"error: run {run_id} failed at main/return@1 (role r): "
        f"model scripted:script.json: scripted model (main/return@1): it broke\n"
        f"  see `agentflow show {run_id}`; fix the cause and rerun with --resume\n")
