"""The Python API for embedding agentflow: `compile` a spec to a plan, `run` a plan (or
`run_async` it inside an event loop). The same pipeline and runner as `agentflow compile`
and `agentflow run`, which call `prepare_run` and `check_path` from here too.

Errors are the CLI's: every one is an `AgentflowError` with the message the CLI prints and
the exit code it ends with (a `CompileError` carries its diagnostics as data). The compiler
and the runtime load on first call, so the CLI can import this module for `--help` too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TextIO

from agentflow.compiler.errors import UsageError

if TYPE_CHECKING:
    from agentflow.compiler.compiled import Plan
    from agentflow.runtime.runner import RunRequest

DEFAULT_DB = ".agentflow/agentflow.duckdb"
DEFAULT_WORKSPACE = ".agentflow/workspace"
SPEC_SUFFIX = ".agentflow"

Source = str | os.PathLike


@dataclass(frozen=True)
class RunResult:
    """What a finished run gives back. `status` is "succeeded" or "failed"; `value` is the
    entry choreography's result (None unless it succeeded); `failed_node` and `error` say
    where and why a failed run stopped. `counts` has the run's nodes per status (reused
    ones among "succeeded"), `reused` how many were reused from earlier runs."""

    run_id: str
    status: str
    value: Any = None
    failed_node: str | None = None
    error: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    reused: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def is_path(source: Source) -> bool:
    """A path object, or a one-line string ending in `.agentflow`; any other string is source text."""
    if isinstance(source, str):
        return source.endswith(SPEC_SUFFIX) and "\n" not in source
    return isinstance(source, os.PathLike)


def compile(source: Source, *, entry: str | None = None, name: str = "<string>") -> Plan:
    """Compiles a spec, given as a path or as source text (`name` is then the file name
    diagnostics show). Raises `CompileError` (its `diagnostics` are the records, warnings
    included) on compile errors and `UsageError` for a file that cannot be read."""
    from agentflow.compiler.pipeline import CompileError, read_source
    from agentflow.compiler.plan_cache import compile_cached
    from agentflow.compiler.source import SourceFile

    text = read_source(os.fspath(source)) if is_path(source) else SourceFile(name, str(source))
    compilation = compile_cached(text, entry=entry)
    if compilation.plan is None:
        raise CompileError(compilation)
    return compilation.plan


def check_path(label: str, path: str | os.PathLike, directory: bool) -> None:
    """Before anything is created: a path that cannot be used is one clear UsageError."""
    from agentflow.runtime.inputs import path_problem
    if problem := path_problem(str(path), directory):
        raise UsageError(f"{label} {path} {problem}; give the path of a {'directory' if directory else 'file'}")


def prepare_run(plan: Plan, inputs: dict, *, db: str | os.PathLike, workspace: str | os.PathLike, spec_dir: Path,
                model: str | None = None, concurrency: int = 16, resume: bool | str = False,
                force: Iterable[str] = (), no_cache: bool = False, dry_run: bool = False,
                durability: str = "group", interactive: bool = False,
                labels: tuple[str, str] = ("db", "workspace")) -> RunRequest:
    """The runner's request for a run of `plan`, once the force patterns and paths are
    checked. `resume`: True continues the latest unfinished run of the flow, a string the
    run of that id. `labels` name the db and workspace in messages (the CLI's options)."""
    from agentflow.runtime.engine import RunOptions
    from agentflow.runtime.inputs import check_force
    from agentflow.runtime.runner import RunRequest

    force = tuple(force)
    check_force(plan.data, force)
    check_path(labels[0], db, directory=False)
    check_path(labels[1], workspace, directory=True)
    options = RunOptions(run_id="", spec_dir=spec_dir, workspace=Path(workspace).resolve(), concurrency=concurrency,
                         model=model, force=force, no_cache=no_cache, dry_run=dry_run)
    return RunRequest(plan=plan.data, plan_hash=plan.plan_hash, inputs=inputs, db_path=Path(db), options=options,
                      resume=resume is not False, resume_run_id=resume if isinstance(resume, str) and resume else None,
                      durability=durability, interactive=interactive)


async def run_async(plan: Plan | Source, inputs: Mapping[str, Any] | None = None, *, db: str | os.PathLike = DEFAULT_DB,
                    workspace: str | os.PathLike = DEFAULT_WORKSPACE, model: str | None = None,
                    concurrency: int = 16, resume: bool | str = False, force: Iterable[str] = (),
                    no_cache: bool = False, entry: str | None = None, spec_dir: str | os.PathLike | None = None,
                    progress: TextIO | None = None) -> RunResult:
    """`run` inside a running event loop; cancelling it stops the run with its state saved."""
    import asyncio

    from agentflow.compiler.compiled import Plan
    from agentflow.runtime.inputs import validate_inputs
    from agentflow.runtime.progress import SilentReporter, reporter_for
    from agentflow.runtime.runner import execute

    if isinstance(plan, Plan):
        where = Path(spec_dir or ".")
    else:
        where = Path(spec_dir or (Path(plan).parent if is_path(plan) else "."))
        plan = compile(plan, entry=entry)
    if not isinstance(inputs or {}, Mapping):
        raise UsageError(f"inputs must be a dict of parameter names to values, not {type(inputs).__name__}")
    if concurrency < 1:
        raise UsageError(f"concurrency {concurrency} is below 1; give the number of calls to run at once")
    request = prepare_run(plan, validate_inputs(plan.data, dict(inputs or {})), db=db, workspace=workspace,
                          spec_dir=where.resolve(), model=model, concurrency=concurrency, resume=resume,
                          force=force, no_cache=no_cache)
    reporter = reporter_for(progress) if progress is not None else SilentReporter()
    try:
        outcome = await execute(request, reporter)
    finally:
        reporter.close()
    if outcome.status == "cancelled":
        raise asyncio.CancelledError
    return _result(outcome, request.db_path)


def run(plan: Plan | Source, inputs: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
    """Runs a plan (or compiles a spec, given as `compile` takes it, and runs it) with
    `inputs`, a dict of Python values, checked against the entry's parameter types.
    Options, as `agentflow run` takes them: `db`, `workspace`, `model` (e.g. "scripted"),
    `concurrency`, `resume` (True, or a run id), `force` (node patterns), `no_cache`,
    `entry`, `spec_dir` (where python tools are found; the spec's directory, or the current
    one for source text) and `progress` (a stream for progress lines; default silent).
    A failed node does not raise: the result says `status == "failed"`. Ctrl-C raises
    KeyboardInterrupt once the run's state is saved."""
    import asyncio
    return asyncio.run(run_async(plan, inputs, **options))


def _result(outcome, db_path: Path) -> RunResult:
    """The outcome, with the run's node counts as the database has them."""
    from agentflow.runtime.store import STATUSES, Store

    with Store.open_reader(db_path) as store:
        row = store.get_run(outcome.run_id) or {}
    failure = outcome.failure
    return RunResult(outcome.run_id, outcome.status, outcome.value,
                     failed_node=failure.node_id if failure else None, error=failure.message if failure else None,
                     counts={s: row[s] for s in STATUSES if row.get(s)}, reused=row.get("cached") or 0)
