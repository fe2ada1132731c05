"""The `agentflow` command line: reads files, calls the library, picks a renderer and
maps outcomes to exit codes (LANGUAGE.md section 6). Heavy modules load per command."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from agentflow.api import DEFAULT_DB, DEFAULT_WORKSPACE
from agentflow.compiler.errors import (EXIT_COMPILE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_WAITING, AgentflowError,
                                       RunFailed, UsageError)


class AgentflowGroup(click.Group):
    """Errors map to exit codes here, for every command: an AgentflowError from anywhere
    below is `error: <message>` on stderr and its exit code, never a traceback."""

    def main(self, args=None, *rest, **kwargs):
        """As the process's own command line (`args` None: click reads sys.argv), a process
        that imported litellm, or that asks to (a no-op rerun), ends without the interpreter's
        teardown (runtime/quick_exit.py)."""
        try:
            return super().main(args, *rest, **kwargs)
        except SystemExit as stop:
            if args is None:
                from agentflow.runtime.quick_exit import ExitWithoutTeardown, exit_without_teardown
                if "litellm" in sys.modules or isinstance(stop, ExitWithoutTeardown):
                    exit_without_teardown(stop.code)
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AgentflowError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)


def _require_temporal() -> None:
    """The Temporal engine is an optional extra: say how to install it, not a traceback."""
    import importlib.util
    if importlib.util.find_spec("temporalio") is None:
        raise UsageError("the Temporal engine needs the temporal extra: install agentflow[temporal] "
                         "(pip install 'agentflow[temporal]')")


def _compile(path: str, fmt: str = "text", entry: str | None = None):
    """Compiles a spec and prints its diagnostics; returns the Plan, or exits 1 on errors."""
    from agentflow.compiler.diagnostics import render_json, render_text
    from agentflow.compiler.pipeline import read_source
    from agentflow.compiler.plan_cache import compile_cached

    source = read_source(path)
    result = compile_cached(source, entry=entry)
    if fmt == "json":
        click.echo(render_json(result.diagnostics), nl=False)
    elif result.diagnostics:
        click.echo(render_text(result.diagnostics, {source.name: source}), err=True, nl=False)
    if not result.ok:
        sys.exit(EXIT_COMPILE)
    return result.plan


@click.group(cls=AgentflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentflow")
def main() -> None:
    """Compile and run .agentflow multi-agent workflows, durably and incrementally."""
    _check_text(sys.argv[1:])


def _check_text(args: list[str]) -> None:
    """Arguments end up in hashes, the database and messages, all UTF-8 text; Python reads a
    byte that is not UTF-8 as a lone surrogate, which would fail deep inside a run instead."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"argument {arg!r} holds a byte that is not UTF-8; give UTF-8 text") from None


@main.command("compile")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="Diagnostics format.")
@click.option("--emit", type=click.Choice(["plan"]), default=None, help="Print the compiled plan as canonical JSON.")
@click.option("--entry", default=None, help="The choreography to compile as the entry point.")
def compile_cmd(file: str, fmt: str, emit: str | None, entry: str | None) -> None:
    """Run every static check; exit 0 when there are no errors, 1 otherwise."""
    plan = _compile(file, fmt, entry)
    if emit == "plan":
        click.echo(plan.to_json(), nl=False)


@main.command("graph")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "json"]), default=None,
              help="Text format [default: mermaid; dot for -o FILE.svg or FILE.png].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here; FILE.svg or FILE.png is rendered by Graphviz (`dot`).")
@click.option("--run", "run_id", default=None,
              help="Colour the expanded instances of this run by status (big fan-outs drawn as one box).")
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--entry", default=None)
def graph_cmd(file: str, fmt: str | None, output: str | None, run_id: str | None, db: str, entry: str | None) -> None:
    """Export the plan as a diagram (Mermaid, Graphviz DOT or JSON; SVG or PNG through Graphviz)."""
    from agentflow.compiler.graph import IMAGE_FORMATS, render_graph, render_image

    image = Path(output).suffix.lower().lstrip(".") if output else ""
    if image in IMAGE_FORMATS and fmt not in (None, "dot"):
        raise UsageError(f"-o {output} is drawn from the dot format, not --format {fmt}; "
                         f"drop --format or write to a .{'json' if fmt == 'json' else 'mmd'} file")
    plan = _compile(file, "text", entry)
    statuses = None
    if run_id is not None:
        from agentflow.runtime.history import run_statuses
        statuses = _history_call(run_statuses, db, run_id, plan.data["flow"], plan.data["entry"])
    if output and image in IMAGE_FORMATS:
        _write_output(output, render_image(render_graph(plan, "dot", statuses), image))
        return
    text = render_graph(plan, fmt or "mermaid", statuses)
    if output:
        _write_output(output, text.encode("utf-8"))
    else:
        click.echo(text, nl=False)


def _write_output(output: str, data: bytes) -> None:
    try:
        Path(output).write_bytes(data)
    except OSError as err:
        raise UsageError(f"cannot write -o {output}: {err.strerror}") from None


def _history_call(fn, db: str, *args):
    from agentflow.api import check_path
    check_path("--db", db, directory=False)
    return fn(db, *args)


@main.command("run")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--input", "input_pairs", multiple=True, metavar="NAME=VALUE",
              help="An input: raw text for a str parameter, JSON otherwise; NAME=@path reads a file.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False), default=None,
              help="A JSON object of inputs.")
@click.option("--entry", default=None, help="The choreography to run (default: `main`, or the only one).")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="The run database.")
@click.option("--workspace", default=DEFAULT_WORKSPACE, show_default=True,
              help="The directory file tools are confined to.")
@click.option("--model", default=None, help="Use this model for every role (e.g. scripted).")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(min=1),
              help="Calls running at once, in all.")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[RUN_ID]",
              help="Continue an interrupted run (the latest one of this flow, or RUN_ID).")
@click.option("--force", multiple=True, metavar="NODE",
              help="Re-run these nodes even if stored: an id as --dry-run prints it ([*] any item, "
                   "#* any iteration), a glob, or a binding name.")
@click.option("--no-cache", is_flag=True, help="Reuse nothing from earlier runs.")
@click.option("--dry-run", is_flag=True, help="Say per node whether it would be reused or run, and why.")
@click.option("--durability", type=click.Choice(["group", "strict"]), default="group", show_default=True,
              help="group: results commit at least every 100 ms and nothing waits for a commit (a kill "
                   "re-runs the last window's nodes on resume); strict: each result commits before "
                   "anything that depends on it starts.")
@click.option("--engine", type=click.Choice(["local", "temporal"]), default="local", show_default=True,
              help="Where calls run: this process, or Temporal workers (docs/TEMPORAL.md).")
@click.option("--address", default="localhost:7233", show_default=True, help="Temporal server (--engine temporal).")
@click.option("--namespace", default="default", show_default=True, help="Temporal namespace.")
@click.option("--task-queue", default="agentflow", show_default=True, help="Temporal task queue of the workers.")
@click.option("--blob-dir", default=None, help="Large payloads, shared with the workers [default: blobs beside --db].")
@click.option("--detach", is_flag=True, help="Submit the run to Temporal, print its id and exit: it finishes on "
                                             "the workers; `agentflow collect RUN_ID` records it.")
@click.option("--lookup-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="How long the workflow waits for this client to look a stored result up before it runs "
                   "the node [default: 3].")
@click.option("--interactive", is_flag=True, help='Ask on this terminal for the answers of `model = "human"` '
                                                  "tasks, instead of stopping for `agentflow answer`.")
def run_cmd(file, input_pairs, inputs_file, entry, db, workspace, model, concurrency, resume, force,
            no_cache, dry_run, durability, engine, address, namespace, task_queue, blob_dir, detach, lookup_timeout,
            interactive) -> None:
    """Compile, then execute; the result is printed as JSON on stdout."""
    import gc

    from agentflow.api import prepare_run
    from agentflow.runtime.inputs import parse_inputs
    from agentflow.runtime.progress import PlainReporter, SilentReporter, reporter_for
    from agentflow.runtime.runner import execute, run_stoppable
    from agentflow.runtime.tools import prints_to_stderr

    _check_temporal_only(engine, dry_run, detach=detach, lookup_timeout=lookup_timeout)
    if engine == "temporal" and not dry_run:
        _require_temporal()
    if interactive and not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError("--interactive asks on a terminal, and this run has none (stdin or stderr is not a "
                         "terminal); run without it and answer with `agentflow answer`")
    if interactive and engine == "temporal":
        raise UsageError("--interactive runs with --engine local; a Temporal run's answers come with "
                         "`agentflow answer`")
    plan = _compile(file, "text", entry)
    request = prepare_run(plan, parse_inputs(plan.data, input_pairs, inputs_file), db=db, workspace=workspace,
                          spec_dir=Path(file).resolve().parent, model=model, concurrency=concurrency,
                          resume=False if resume is None else resume or True, force=force, no_cache=no_cache,
                          dry_run=dry_run, durability=durability, interactive=interactive,
                          labels=("--db", "--workspace"))
    # questions on the terminal need plain lines, not a live display redrawn over them
    reporter = (SilentReporter() if dry_run else PlainReporter(sys.stderr, plan.data) if interactive
                else reporter_for(sys.stderr, plan.data))
    # Modules, the program and its plan outlive the run: the collector's full passes while
    # nodes run need not walk them again and again (~0.1 s of a 10k-node rerun).
    gc.freeze()
    interrupted = False
    try:
        with prints_to_stderr():  # what tools print must not mix with the result on stdout
            if engine == "temporal" and not dry_run:  # --dry-run only reads the database: local
                from agentflow.runtime.temporal.client import TemporalSettings, execute_temporal
                from agentflow.runtime.temporal.wire import LOOKUP_TIMEOUT_S
                # a detached run has no client to answer lookups: each would only wait out its timeout
                lookups_s = 0.0 if detach else LOOKUP_TIMEOUT_S if lookup_timeout is None else lookup_timeout
                settings = TemporalSettings(address, namespace, task_queue, Path(blob_dir) if blob_dir else None,
                                            lookups_s, detach)
                outcome, terminated = run_stoppable(execute_temporal(request, reporter, settings))
            else:
                outcome, terminated = run_stoppable(execute(request, reporter))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reporter.close()  # its summary comes before any error or stop message
        gc.unfreeze()  # everything is collectable again before exit
    if interrupted:
        _stopped(terminated=False)
    if terminated or outcome.status == "cancelled":
        _stopped(terminated)
    if dry_run:
        _print_decisions(outcome, plan.data)
        return
    if outcome.status == "detached":
        _print_detached(outcome.run_id, plan.data["flow"], db)
        _exit_past_temporal_threads()
    _print_outcome(outcome, file, db, engine)
    if outcome.repeats:  # no work to do, no user code ran: nothing for a teardown to finish
        from agentflow.runtime.quick_exit import ExitWithoutTeardown
        raise ExitWithoutTeardown(0)


def _check_temporal_only(engine: str, dry_run: bool, **options) -> None:
    """Options of a run on Temporal are a usage error with another engine, or with --dry-run."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value not in (None, False) and engine != "temporal":
            raise UsageError(f"{flag} applies to runs on Temporal; add --engine temporal (docs/TEMPORAL.md)")
        if value not in (None, False) and dry_run:
            raise UsageError(f"{flag} applies to a run, and --dry-run runs nothing; drop one of them")


def _print_outcome(outcome, file: str, db: str, engine: str) -> None:
    """The end of a run that finished or stopped for people: value and exit code."""
    import json

    from agentflow.compiler.hashing import escape_surrogates
    if outcome.status == "failed":
        raise _run_failed(outcome)
    if outcome.status == "waiting":
        _print_waiting(outcome, file, db, engine)
        sys.exit(EXIT_WAITING)
    click.echo(escape_surrogates(json.dumps(outcome.value, indent=2, ensure_ascii=False)))
    if outcome.repeats:
        click.echo(f"no work to do: plan, inputs and tool code are those of run {outcome.repeats}, "
                   f"whose result is reused (--force NODE or --no-cache runs again)", err=True)
    click.echo(f"run {outcome.run_id} succeeded", err=True)


def _print_detached(run_id: str, flow: str, db: str) -> None:
    """The run id on stdout (for scripts), and on stderr where it runs and how to collect it."""
    from agentflow.runtime.temporal.wire import workflow_id
    click.echo(run_id)
    click.echo(f"run {run_id} goes on on the Temporal workers as workflow {workflow_id(flow, run_id)}; "
               f"`agentflow collect {run_id}{_db_option(db)}` records it in the database", err=True)


def _db_option(db: str) -> str:
    """` --db DB` for a command to copy, or nothing for the default database."""
    import shlex
    return "" if db == DEFAULT_DB else f" --db {shlex.quote(db)}"


def _run_failed(outcome) -> RunFailed:
    """Where the run failed, and how to look and go on."""
    f = outcome.failure
    where = f"{f.node_id}" + (f" (role {f.role})" if f and f.role else "") if f else "a node"
    return RunFailed(f"run {outcome.run_id} failed at {where}: {f.message if f else 'unknown error'}\n"
                     f"  see `agentflow show {outcome.run_id}`; fix the cause and rerun with --resume")


def _print_waiting(outcome, file: str, db: str, engine: str) -> None:
    """Each node waiting for a person (id, prompt, type, how to answer), then how to go on."""
    import shlex

    from agentflow.runtime.human import describe
    options = _db_option(db)
    resume = f"agentflow run {shlex.quote(file)}{' --engine temporal' if engine == 'temporal' else ''} --resume"
    for question in outcome.questions:
        click.echo(describe(outcome.run_id, question, options), err=True)
    n = len(outcome.questions)
    click.echo(f"run {outcome.run_id} is waiting for {n} answer{'s' if n != 1 else ''}; answer with "
               f"`agentflow answer`, then continue with `{resume} {outcome.run_id}{options}`", err=True)


def _stopped(terminated: bool) -> None:
    """A run stopped by Ctrl-C (exit 130) or SIGTERM (exit 143): its state is saved."""
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    click.echo(f"{how}: state saved; run again with --resume to continue", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _print_decisions(outcome, plan: dict) -> None:
    seen = set()
    for d in outcome.decisions:
        seen.add(d.node_id)
        click.echo(f"{d.action:<6} {d.node_id}  ({d.reason})")
    from agentflow.compiler.names import template_id
    decided = {template_id(n) for n in seen}
    for tid, node in sorted(plan["nodes"].items()):
        if node["kind"] in ("task", "tool") and tid not in decided:
            click.echo(f"{'run':<6} {tid}  (its inputs come from nodes that will run)")


@main.command("collect")
@click.argument("run_id")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="The database the run was started with.")
@click.option("--address", default="localhost:7233", show_default=True, help="Temporal server.")
@click.option("--namespace", default="default", show_default=True, help="Temporal namespace.")
@click.option("--blob-dir", default=None, help="Large payloads, shared with the workers [default: blobs beside --db].")
def collect_cmd(run_id: str, db: str, address: str, namespace: str, blob_dir: str | None) -> None:
    """Record in the database what a run on Temporal did with no client following it (`run
    --detach`, a client that died); one still running is followed to its end. Exit code and
    printed result as the run's own; Ctrl-C stops collecting, not the run."""
    _require_temporal()
    from agentflow.api import check_path
    from agentflow.runtime.progress import reporter_for
    from agentflow.runtime.runner import run_stoppable
    from agentflow.runtime.temporal.client import TemporalSettings, collect_temporal, temporal_run_plan

    check_path("--db", db, directory=False)
    plan = temporal_run_plan(Path(db), run_id)
    reporter = reporter_for(sys.stderr, dict(plan))
    settings = TemporalSettings(address, namespace, blob_dir=Path(blob_dir) if blob_dir else None)
    outcome, terminated = None, False
    try:
        outcome, terminated = run_stoppable(collect_temporal(Path(db), run_id, plan, reporter, settings))
    except KeyboardInterrupt:
        pass
    finally:
        reporter.close()
    if outcome is None or outcome.status == "detached":
        click.echo(f"stopped collecting; run {run_id} goes on on the Temporal workers; "
                   f"`agentflow collect {run_id}{_db_option(db)}` continues", err=True)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    if outcome.status == "cancelled":
        click.echo(f"run {run_id} was cancelled on Temporal; `agentflow run FILE --engine temporal "
                   f"--resume {run_id}` continues it", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _print_outcome(outcome, "FILE", db, "temporal")
    _exit_past_temporal_threads()


@main.command("answer")
@click.argument("run_id")
@click.argument("node_id")
@click.argument("value", required=False)
@click.option("--file", "value_file", type=click.Path(dir_okay=False), default=None,
              help="Read the answer from this file instead of VALUE.")
@click.option("--by", default=None, help="Who answers [default: your login name].")
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--address", default="localhost:7233", show_default=True, help="Temporal server (a Temporal run).")
@click.option("--namespace", default="default", show_default=True, help="Temporal namespace (a Temporal run).")
def answer_cmd(run_id, node_id, value, value_file, by, db, address, namespace) -> None:
    """Answer a node that waits for a person: VALUE is JSON, or plain text for a `str` answer."""
    from agentflow.api import check_path
    from agentflow.runtime.answers import answer, next_step
    from agentflow.runtime.human import current_user

    if (value is None) == (value_file is None):
        raise UsageError("give the answer as VALUE or with --file F (one of them)")
    text = value if value is not None else _read_answer_file(value_file)
    check_path("--db", db, directory=False)
    given = answer(Path(db), run_id, node_id, text, by or current_user(),
                   temporal={"address": address, "namespace": namespace})
    click.echo(next_step(given), err=True)
    if given.node.temporal:
        _exit_past_temporal_threads()


def _exit_past_temporal_threads() -> None:
    """Exit 0 now, skipping interpreter teardown: a short-lived process that used a Temporal
    client can abort in finalization while the SDK's Rust threads still hold thread states
    (temporalio/sdk-python#300). Everything is written and flushed by then."""
    import os
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _read_answer_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read --file {path}: {getattr(err, 'strerror', None) or err}") from None


@main.command("worker")
@click.option("--address", default="localhost:7233", show_default=True, help="Temporal server.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--task-queue", default="agentflow", show_default=True)
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(min=1),
              help="Model and tool calls this worker runs at once.")
@click.option("--blob-dir", default=".agentflow/blobs", show_default=True,
              help="Large payloads: the same directory as the clients' (a shared path across machines).")
@click.option("--identity", default=None, help="Worker name in Temporal [default: agentflow-worker-PID@HOST].")
def worker_cmd(address, namespace, task_queue, concurrency, blob_dir, identity) -> None:
    """Run agentflow workflows and their model and tool calls from a Temporal task queue."""
    import asyncio

    _require_temporal()
    from agentflow.runtime.temporal.worker import run_worker
    from agentflow.runtime.tools import prints_to_stderr
    try:
        with prints_to_stderr():  # what tools print goes with the worker's log, never to stdout
            asyncio.run(run_worker(address, namespace, task_queue, concurrency, Path(blob_dir), identity))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


@main.command("runs")
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_cmd(db: str, as_json: bool) -> None:
    """The runs in the database, newest first."""
    from agentflow.runtime.history import list_runs, print_runs
    runs = _history_call(list_runs, db)
    print_runs(runs, as_json)


@main.command("show")
@click.argument("run_id")
@click.argument("node_id", required=False)
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of node instances, or the one node.")
def show_cmd(run_id: str, node_id: str | None, db: str, as_json: bool) -> None:
    """One run: every node instance with status, reuse, attempts, duration, tokens, cost and error.
    With NODE_ID, that node: its messages (prompt, model answers, tool calls and results) and result."""
    from agentflow.runtime.history import node_detail, print_node, print_nodes, run_detail
    if node_id is not None:
        print_node(_history_call(node_detail, db, run_id, node_id), as_json)
        return
    run, nodes = _history_call(run_detail, db, run_id)
    print_nodes(run, nodes, as_json)


@main.group("agents", invoke_without_command=True)
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--tree", is_flag=True, help="Who created whom: each role, the agents it created (`spawn = true`), theirs.")
@click.pass_context
def agents_cmd(ctx: click.Context, db: str, as_json: bool, tree: bool) -> None:
    """Persistent agents (`memory = "persistent"`): each with its turn count, tokens and last
    use, most recently used first. `--tree`: the agents created at run time, by creator.
    `agents show NAME` prints a persistent agent's conversation."""
    ctx.obj = db  # the subcommands' database unless they name their own
    if ctx.invoked_subcommand is None:
        from agentflow.runtime.history import agent_tree, created_agents, list_agents, print_agents, print_tree
        if tree:
            print_tree(agent_tree(_history_call(created_agents, db)), as_json)
        else:
            print_agents(_history_call(list_agents, db), as_json)


@agents_cmd.command("show")
@click.argument("name")
@click.option("--generation", type=click.IntRange(min=0), default=None,
              help="An earlier generation (before a reset) [default: the current one].")
@click.option("--db", default=None, help=f"The run database [default: {DEFAULT_DB}].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def agents_show_cmd(group_db: str, name: str, generation: int | None, db: str | None, as_json: bool) -> None:
    """A persistent agent's conversation, turn by turn, with the run and node of each turn."""
    from agentflow.runtime.history import agent_detail, print_agent
    print_agent(_history_call(agent_detail, db or group_db, name, generation), as_json)


@agents_cmd.command("reset")
@click.argument("name")
@click.option("--db", default=None, help=f"The run database [default: {DEFAULT_DB}].")
@click.pass_obj
def agents_reset_cmd(group_db: str, name: str, db: str | None) -> None:
    """Start a persistent agent's conversation afresh. Its history stays in the database
    (the `agent_turns` view), under the previous generation."""
    from agentflow.runtime.history import reset_agent
    generation = _history_call(reset_agent, db or group_db, name)
    click.echo(f"agent {name} starts afresh: generation {generation} (earlier generations are kept)", err=True)


@main.command("ui")
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to serve on.")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@click.option("--address", default="localhost:7233", show_default=True,
              help="Temporal server (answers to a Temporal run's waiting nodes).")
@click.option("--namespace", default="default", show_default=True, help="Temporal namespace (a Temporal run).")
def ui_cmd(db: str, host: str, port: int, address: str, namespace: str) -> None:
    """Serve a local page of the runs: their graphs, live while they run, each node's messages,
    and a form for the nodes that wait for a person."""
    import importlib.util
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise UsageError("the run viewer needs starlette and uvicorn, which are missing from this "
                         "environment: pip install starlette uvicorn")
    from agentflow.api import check_path
    from agentflow.runtime.ui.app import listen, serve
    check_path("--db", db, directory=False)
    sock = listen(host, port)
    where, bound = sock.getsockname()[:2]
    import signal
    # uvicorn shuts down on SIGTERM, then raises it again for this handler: exit 143 like `run`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_TERMINATED))
    try:  # from the moment the address is printed, Ctrl-C is a stop (130), never click's "Aborted!"
        click.echo(f"agentflow ui: http://{where}:{bound}/ (reading {db}; Ctrl-C stops it)", err=True)
        serve(db, sock, host, {"address": address, "namespace": namespace})
    except KeyboardInterrupt:
        # A Ctrl-C while uvicorn sets up its event loop leaves a half-made loop and an unawaited
        # coroutine whose teardown prints a traceback: end here, while the traceback holds them.
        from agentflow.runtime.quick_exit import exit_without_teardown
        exit_without_teardown(EXIT_INTERRUPTED)


@main.command("explain")
@click.argument("code", required=False)
@click.option("--list", "list_codes", is_flag=True, help="One line per code: code, severity, title.")
def explain_cmd(code: str | None, list_codes: bool) -> None:
    """What a diagnostic code means, with a wrong example and the fix (e.g. `agentflow explain E302`)."""
    from agentflow.compiler.codes import find_code, render_explanation, render_list, unknown_code_message
    if list_codes == (code is not None):
        raise UsageError("give one diagnostic code (e.g. `agentflow explain E302`) or `--list`")
    if code is None:  # --list
        click.echo(render_list(), nl=False)
        return
    found = find_code(code)
    if found is None:
        raise UsageError(unknown_code_message(code))
    click.echo(render_explanation(found), nl=False)
