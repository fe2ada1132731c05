"""The `agentflow` command line: reads files, calls the library, picks a renderer and
maps outcomes to exit codes (LANGUAGE.md section 6). Heavy modules load per command."""
from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK, EXIT_COMPILE, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_DB = ".agentflow/agentflow.duckdb"
DEFAULT_WORKSPACE = ".agentflow/workspace"


class UserError(click.ClickException):
    """Bad input from the user: printed as `error: ...`, exit 2."""
    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _compile(path: str, fmt: str = "text", entry: str | None = None):
    """Compiles a spec; prints diagnostics; returns the Compilation (plan None on errors)."""
    from agentflow.compiler.diagnostics import render_json, render_text
    from agentflow.compiler.pipeline import SourceError, compile_source, read_source

    try:
        source = read_source(path)
    except SourceError as err:
        raise UserError(str(err)) from None
    result = compile_source(source, entry=entry)
    if fmt == "json":
        click.echo(render_json(result.diagnostics), nl=False)
    elif result.diagnostics:
        click.echo(render_text(result.diagnostics, {source.name: source}), err=True, nl=False)
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentflow")
def main() -> None:
    """Compile and run .agentflow multi-agent workflows, durably and incrementally."""


@main.command("compile")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="Diagnostics format.")
@click.option("--emit", type=click.Choice(["plan"]), default=None, help="Print the compiled plan as canonical JSON.")
@click.option("--entry", default=None, help="The choreography to compile as the entry point.")
def compile_cmd(file: str, fmt: str, emit: str | None, entry: str | None) -> None:
    """Run every static check; exit 0 when there are no errors, 1 otherwise."""
    result = _compile(file, fmt, entry)
    if not result.ok:
        sys.exit(EXIT_COMPILE)
    if emit == "plan":
        click.echo(result.plan.to_json(), nl=False)


@main.command("graph")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "json"]), default="mermaid")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None)
@click.option("--run", "run_id", default=None, help="Colour the expanded instances of this run by status.")
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--entry", default=None)
def graph_cmd(file: str, fmt: str, output: str | None, run_id: str | None, db: str, entry: str | None) -> None:
    """Export the plan as a diagram (Mermaid, Graphviz DOT or JSON)."""
    from agentflow.compiler.graph import render_graph

    result = _compile(file, "text", entry)
    if not result.ok:
        sys.exit(EXIT_COMPILE)
    statuses = None
    if run_id is not None:
        from agentflow.runtime.history import run_statuses
        statuses = _history_call(run_statuses, db, run_id)
    text = render_graph(result.plan, fmt, statuses)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


def _history_call(fn, *args):
    from agentflow.runtime.store import StoreError
    try:
        return fn(*args)
    except StoreError as err:
        raise UserError(str(err)) from None
