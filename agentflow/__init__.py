"""agentflow: a declarative language and a durable, incremental runner for multi-agent LLM workflows.

The Python API (docs/API.md), for embedding:

    plan = agentflow.compile("specs/build_project.agentflow")    # or source text
    result = agentflow.run(plan, {"project_spec": "..."}, db="runs.duckdb", model="scripted")
    result.value, result.status, result.run_id, result.counts, result.reused

`compile` raises `CompileError` (diagnostics as data); every error is an `AgentflowError`.
The names load on first use, so `import agentflow` stays cheap.
"""

__version__ = "0.1.0"

TYPE_CHECKING = False  # not `typing`'s: importing it would cost more than this whole module
if TYPE_CHECKING:  # what type checkers see; at run time `__getattr__` loads these
    from agentflow.api import RunResult, compile, run, run_async
    from agentflow.compiler.errors import AgentflowError, UsageError
    from agentflow.compiler.pipeline import CompileError
    from agentflow.compiler.compiled import Plan

__all__ = ["AgentflowError", "CompileError", "Plan", "RunResult", "UsageError", "compile", "run", "run_async"]

_HOMES = {
    "AgentflowError": "agentflow.compiler.errors",
    "UsageError": "agentflow.compiler.errors",
    "CompileError": "agentflow.compiler.pipeline",
    "Plan": "agentflow.compiler.compiled",
    "RunResult": "agentflow.api",
    "compile": "agentflow.api",
    "run": "agentflow.api",
    "run_async": "agentflow.api",
}


def __getattr__(name: str):
    """Loads an API name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'agentflow' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
