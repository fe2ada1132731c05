"""Tools: the template language, and calling python, command and builtin tools.

A tool is declared in a spec (`tool name(params) -> Type { ... }`) and reaches this package as a
`ToolSpec`. `call_tool` runs one call and returns a JSON-compatible value, or raises:

- `ToolError`: the call failed in a way the calling model should see; the message is written
  for that reader (no tracebacks, no internal file names).
- `TransientToolError` (a `ToolError`): a timeout or a passing OS failure; the runner retries
  it with backoff before treating it as a `ToolError`.

Three kinds of tools:

- **python** (`target = "module.path:function"`): resolved beside the spec first
  (`<spec_dir>/module/path.py` or `<spec_dir>/module/path/__init__.py`), then as a normal
  import. Modules beside a spec are loaded under a private package name per spec directory, so
  two specs may each have their own `tools/text.py`, and `sys.path` is never changed. Inside
  such a module, import sibling modules relatively (`from . import helpers`). A module beside a
  spec is reloaded when its file changes (its helpers are not); environment modules are
  imported once per process.
- **command** (`target` = an argv template): each element is rendered on its own and passed as
  one argument, with no shell, so no value can inject a command. stdout is the result (text
  when `returns_str`, JSON otherwise); a non-zero exit status is a `ToolError` carrying the
  tail of stderr.
- **builtin** (`fs.read`, `fs.write`, `fs.list`): files confined to the workspace. A path that
  resolves outside it (absolute, `..`, or through a symlink) is refused before anything is
  touched.

Boundaries every call keeps: arguments are checked against the declared parameter types
(`check_arguments`) before anything runs; every call has a timeout (`DEFAULT_TIMEOUT_S` unless
the tool sets `timeout`); a command's stdout is cut after `OUTPUT_CAP_BYTES`; an OS failure
(a name too long, a path that cannot be encoded) is the tool's error, never the run's crash;
and what tools print goes to stderr while `prints_to_stderr` is active (stdout carries the
run's result).

`tool_code_version` gives the version of a tool's code for cache keys (see its docstring for
what it covers and what it does not).

One job per module: `spec` (what a tool is, how a call fails), `templates` (the argument
template language), `workers` (blocking code off the loop; timeouts), `loader` (finding and
loading a python tool's module), `python`, `command` and `fs` (calling each kind), `dispatch`
(checking arguments, choosing the kind, code versions), `output` (tools print to stderr).
"""
from __future__ import annotations

from agentflow.compiler.names import BUILTIN_TOOLS

from .command import OUTPUT_CAP_BYTES
from .dispatch import call_tool, check_arguments, tool_code_version
from .output import prints_to_stderr
from .spec import ToolContext, ToolError, ToolSpec, TransientToolError
from .templates import CompiledTemplate, TemplateError, TemplateRef, compile_template, render_template
from .workers import DEFAULT_TIMEOUT_S

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TIMEOUT_S",
    "OUTPUT_CAP_BYTES",
    "CompiledTemplate",
    "TemplateError",
    "TemplateRef",
    "ToolContext",
    "ToolError",
    "ToolSpec",
    "TransientToolError",
    "call_tool",
    "check_arguments",
    "compile_template",
    "prints_to_stderr",
    "render_template",
    "tool_code_version",
]
