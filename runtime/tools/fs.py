"""The builtin tools `fs.read`, `fs.write` and `fs.list`: files confined to the workspace. A
path that resolves outside it (absolute, `..`, or through a symlink) is refused before
anything is touched."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from agentflow.compiler.names import BUILTIN_TOOLS

from .spec import ToolContext, ToolError, ToolSpec, tool_failure
from .templates import kind_of
from .workers import tool_threads, with_timeout


_PATH_QUOTE = 200


def builtin_code_version(spec: ToolSpec) -> str:
    """Its version in `names.BUILTIN_TOOLS`, bumped when its behaviour changes, so cached
    results are not reused (see `tool_code_version`)."""
    version = BUILTIN_TOOLS.get(str(spec.target))
    return f"builtin:{spec.target}@{version}" if version else f"builtin:unknown:{spec.target}"


def workspace_of(ctx: ToolContext) -> Path:
    workspace = Path(ctx.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace.resolve()


def confine(spec: ToolSpec, workspace: Path, raw: str) -> Path:
    """The resolved path of `raw` inside the (resolved) workspace, or a ToolError.

    Symlinks are followed by `resolve()`, so a link inside the workspace that points outside
    is refused like `..` or an absolute path. Nothing is created here.
    """
    try:
        resolved = (workspace / raw).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise tool_failure(spec, f"cannot resolve path {raw}: {exc}") from None
    if not resolved.is_relative_to(workspace):
        raise ToolError(f"path {raw} is outside the workspace", tool=spec.name)
    return resolved


def _path_arg(spec: ToolSpec, args: dict, default: str | None) -> str:
    name = spec.params[0] if spec.params else None
    value = args.get(name) if name is not None else None
    if value is None:
        if default is None:
            raise tool_failure(spec, f"missing argument {name or 'path'}")
        return default
    if not isinstance(value, str):
        raise ToolError(
            f"tool {spec.name}: argument {name} must be a string path, not {kind_of(value)}",
            tool=spec.name,
        )
    if "\x00" in value:
        raise tool_failure(spec, f"path {value!r} contains a NUL character")
    return value


def _relative(workspace: Path, path: Path) -> str:
    rel = path.relative_to(workspace).as_posix()
    return rel if rel != "." else "."


def _fs_read(spec: ToolSpec, args: dict, ctx: ToolContext) -> str:
    raw = _path_arg(spec, args, None)
    workspace = workspace_of(ctx)
    target = confine(spec, workspace, raw)
    if target.is_dir():
        raise tool_failure(spec, f"{raw} is a directory, not a file")
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise tool_failure(spec, f"no such file: {raw}") from None
    except OSError as exc:
        raise tool_failure(spec, f"cannot read {raw}: {exc.strerror or exc}") from None
    return data.decode("utf-8", errors="replace")


def _fs_write(spec: ToolSpec, args: dict, ctx: ToolContext) -> str:
    raw = _path_arg(spec, args, None)
    content_name = spec.params[1] if len(spec.params) > 1 else None
    content = args.get(content_name, "") if content_name is not None else ""
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ToolError(
            f"tool {spec.name}: argument {content_name} must be a string, not {kind_of(content)}",
            tool=spec.name,
        )
    workspace = workspace_of(ctx)
    target = confine(spec, workspace, raw)
    if target == workspace or target.is_dir():
        raise tool_failure(spec, f"{raw} is a directory, not a file")
    data = content.encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after creating directories, in case the tree changed in between.
        confine(spec, workspace, str(target.parent))
        target.write_bytes(data)
    except OSError as exc:
        raise tool_failure(spec, f"cannot write {raw}: {exc.strerror or exc}") from None
    return f"wrote {len(data)} bytes to {_relative(workspace, target)}"


def _fs_list(spec: ToolSpec, args: dict, ctx: ToolContext) -> list[str]:
    raw = _path_arg(spec, args, ".")
    workspace = workspace_of(ctx)
    target = confine(spec, workspace, raw)
    if not target.exists():
        raise tool_failure(spec, f"no such directory: {raw}")
    if not target.is_dir():
        raise tool_failure(spec, f"{raw} is not a directory")
    entries = []
    try:
        for child in target.iterdir():
            rel = child.relative_to(workspace).as_posix()
            entries.append(rel + "/" if child.is_dir() else rel)
    except OSError as exc:
        raise tool_failure(spec, f"cannot list {raw}: {exc.strerror or exc}") from None
    return sorted(entries)


_BUILTINS: dict[str, Callable[[ToolSpec, dict, ToolContext], Any]] = {
    "fs.read": _fs_read,
    "fs.write": _fs_write,
    "fs.list": _fs_list,
}


async def call_builtin(spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    fn = _BUILTINS.get(str(spec.target))
    if fn is None:
        known = ", ".join(BUILTIN_TOOLS)
        raise ToolError(
            f"tool {spec.name}: unknown builtin {spec.target!r} (known: {known})", tool=spec.name
        )
    # A FIFO in the workspace blocks a read forever: builtins have a timeout too.
    return await with_timeout(spec, tool_threads.run(_os_errors_as_tool_errors, fn, spec, args, ctx))


def _os_errors_as_tool_errors(fn: Callable, spec: ToolSpec, args: dict, ctx: ToolContext) -> Any:
    """Run a builtin; an OS failure the builtin did not explain itself (a name too long, a
    path that cannot be encoded as a file name) is still the tool's error, not the run's."""
    try:
        return fn(spec, args, ctx)
    except (OSError, ValueError) as exc:
        raw = args.get(spec.params[0]) if spec.params else None
        where = f" {_shown_path(raw)}" if isinstance(raw, str) else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise tool_failure(spec, f"cannot use path{where}: {reason}") from None


def _shown_path(raw: str) -> str:
    """A path for a message: long ones are shortened (the OS limit is 4,096 bytes)."""
    if len(raw) <= _PATH_QUOTE:
        return raw
    return f"{raw[:_PATH_QUOTE]}... ({len(raw.encode('utf-8', 'surrogatepass'))} bytes)"
