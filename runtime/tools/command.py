"""Command tools: an argv template rendered element by element and run with no shell, so no
value can inject a command. stdout is the result (text when `returns_str`, JSON otherwise),
cut after `OUTPUT_CAP_BYTES`; a non-zero exit status is a `ToolError` carrying the tail of
stderr; a timeout kills the command's whole process group."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from typing import Any

from agentflow.compiler.hashing import canonical_json, digest

from .fs import confine, workspace_of
from .spec import ToolContext, ToolError, ToolSpec, TransientToolError, tool_failure
from .templates import TemplateError, render_template
from .workers import timed_out, timeout_of

_STDERR_TAIL = 2000
_OUTPUT_QUOTE = 200
OUTPUT_CAP_BYTES = 1 << 20  # a command's stdout beyond 1 MiB is cut (and says so)


def command_code_version(spec: ToolSpec) -> str:
    """A hash of the argv template, the cwd and how stdout is read (see `tool_code_version`)."""
    target = [spec.target] if isinstance(spec.target, str) else list(spec.target)
    output = "str" if spec.returns_str else "json"
    return "command:" + digest("command", canonical_json(target), spec.cwd or "", output)


async def call_command(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    template = [spec.target] if isinstance(spec.target, str) else list(spec.target)
    try:
        argv = [render_template(element, args) for element in template]
    except TemplateError as exc:
        raise tool_failure(spec, str(exc)) from None
    if not argv or not argv[0]:
        raise tool_failure(spec, "the command is empty")

    workspace = workspace_of(ctx)
    cwd = workspace
    if spec.cwd:
        cwd = confine(spec, workspace, spec.cwd)
        if not cwd.is_dir():
            raise ToolError(
                f"tool {spec.name}: working directory {spec.cwd} does not exist in the workspace",
                tool=spec.name,
            )

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole on timeout
        )
    except FileNotFoundError:
        raise tool_failure(spec, f"executable not found: {argv[0]}") from None
    except PermissionError:
        raise tool_failure(spec, f"cannot execute {argv[0]} (permission denied)") from None
    except OSError as exc:
        transient = exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
        cls = TransientToolError if transient else ToolError
        raise tool_failure(spec, f"cannot start {argv[0]}: {exc.strerror or exc}", cls) from None
    except ValueError as exc:  # a NUL or an unencodable character in an argument
        raise tool_failure(spec, f"cannot start {argv[0]!r}: {exc}") from None

    assert proc.stdout is not None and proc.stderr is not None, "both are pipes"
    output = asyncio.gather(_read_head(proc.stdout, OUTPUT_CAP_BYTES),
                            _read_tail(proc.stderr, _STDERR_TAIL * 4), proc.wait())
    output.add_done_callback(_retrieve)  # a timeout or a signal cancels it: nobody else looks
    try:
        (stdout, cut), stderr, _ = await asyncio.wait_for(output, timeout_of(spec))
    except TimeoutError:
        await _kill(proc)
        raise timed_out(spec) from None
    except BaseException:  # cancelled: leave no process behind
        await _kill(proc)
        raise

    if proc.returncode != 0:
        tail = stderr.decode("utf-8", errors="replace")[-_STDERR_TAIL:]
        status = proc.returncode
        if status is not None and status < 0:
            try:
                how = f"was killed by signal {signal.Signals(-status).name}"
            except ValueError:
                how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        detail = f"; stderr:\n{tail}" if tail.strip() else " (no stderr output)"
        raise ToolError(
            f"tool {spec.name} {how}{detail}", tool=spec.name, exit_status=status, stderr=tail
        )

    text = stdout.decode("utf-8", errors="replace")
    if spec.returns_str:
        return text + (f"\n[... {cut} bytes cut ...]" if cut else "")
    if cut:
        raise tool_failure(spec, f"printed {len(stdout) + cut} bytes, more than the {OUTPUT_CAP_BYTES} a tool may "
                          f"return, and JSON output cannot be cut")
    return _parse_json_output(spec, text)


def _retrieve(future: asyncio.Future) -> None:
    """Marks a future's exception as seen, so asyncio does not print it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _read_head(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, int]:
    """The first `cap` bytes of a stream, and how many bytes after them were read and dropped
    (read to the end all the same, so the writer never blocks on a full pipe)."""
    head = bytearray()
    cut = 0
    while chunk := await stream.read(1 << 16):
        room = cap - len(head)
        head += chunk[:room]
        cut += max(0, len(chunk) - room)
    return bytes(head), cut


async def _read_tail(stream: asyncio.StreamReader, cap: int) -> bytes:
    """The last `cap` bytes of a stream (read to the end)."""
    tail = bytearray()
    while chunk := await stream.read(1 << 16):
        tail += chunk
        del tail[:-cap]
    return bytes(tail)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json_output(spec: ToolSpec, text: str) -> Any:
    if not text.strip():
        raise ToolError(
            f"tool {spec.name} printed nothing; expected JSON on stdout", tool=spec.name
        )
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        start = text[:_OUTPUT_QUOTE] + ("..." if len(text) > _OUTPUT_QUOTE else "")
        raise ToolError(
            f"tool {spec.name} printed output that is not valid JSON ({reason}); "
            f"it starts with: {start!r}",
            tool=spec.name,
        ) from None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the process and its process group, then reap it. Not with `proc.kill()` where
    the group can be killed: it polls first, and when the child has just died that poll
    reaps it, racing asyncio's child watcher, which then logs `Unknown child process pid N,
    will report returncode 255` on the user's stderr."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: the process and its children
        except AttributeError:  # no process groups on this system
            proc.kill()
        except ProcessLookupError:
            pass  # it has exited: the watcher reaps it
        except PermissionError:
            pass  # not ours to signal (a setuid program): nothing more to try
    else:
        try:  # the leader is gone; children it left in its group still get killed
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        pass
