"""The one root of the errors a user sees, and the exit code each ends with (LANGUAGE.md
section 6). The CLI prints any `AgentflowError` as `error: <message>` on stderr and exits
with its `exit_code`, in one place; the raiser only words the message: what went wrong,
where, and what to do. The compiler and the runtime both import this module.

    AgentflowError
      UsageError       exit 2: bad input from the user, nothing run or changed
        SourceError      compiler/pipeline.py   a spec that cannot be read
        InputError       runtime/inputs.py      an input missing, unreadable or mistyped
        ResumeError      runtime/runner.py      `--resume` of a run that is not there
        CredentialError  runtime/credentials.py a model of the run has no key
        StoreError       runtime/store/         the database (StoreLocked, StoreSchemaError,
                                                StoreNotADatabase, StoreEmpty; NotFound in runtime/ui/reads.py:
                                                a run or node the page is asked for)
        TemporalError    runtime/temporal/worker.py  the server is unreachable or refused
      CompileError     exit 1: compiler/pipeline.py, raised by the Python API (agentflow.compile)
      RunFailed        exit 3: a node failed after its retries; the run's state is saved
        AnswerError      runtime/answers.py     `agentflow answer` of a node that is not waiting,
                                                or a value that does not fit (exit 2); its
                                                NotAnswerable: no such run or waiting node

Compile errors (exit 1) are diagnostics, which the CLI prints itself, and a stop by Ctrl-C or SIGTERM
(130, 143) is no error. Outside the family, because they steer control inside the compiler
or the engine and never reach the CLI: NestingTooDeep (the parser turns it into a
diagnostic); NodeFailure, NodeWaiting, RunAborted and DryRunStop (the engine: a NodeFailure becomes the
failed run's outcome, which the CLI reports as RunFailed); ModelError, ToolError (and
their TransientModelError, TransientToolError), TemplateError and ExpressionError (one
node's call: retried, or recorded as the node's failure); BlobMissing (the Temporal codec:
the client rewords it as a TemporalError); SpawnError (runtime/spawn.py: a spawn tool call
that cannot be done, whose message goes back to the model as the tool's result); ToolInterrupted
(runtime/task.py: a non-idempotent tool call whose Temporal worker was lost, answered with the
handoff note as a crash-interrupted call is locally); TypeMismatch (compiler/types.py: a value
that does not fit its type, which each caller rewords as an InputError, ToolError or AnswerError)
and NotPlain (compiler/types.py: a value its plain check leaves to pydantic); ExitWithoutTeardown
(runtime/quick_exit.py: the SystemExit of a no-op rerun, which ends without the teardown);
ValueTooLarge (runtime/store/records.py: a value over the size a stored value may be, which
each caller rewords as a NodeFailure, an InputError or an AnswerError).
"""
from __future__ import annotations

EXIT_COMPILE, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143
EXIT_WAITING = 4  # the run stopped at nodes a person answers (`agentflow answer`, then `--resume`)


class AgentflowError(Exception):
    """An error a user sees: `message` is what the CLI prints after `error: `."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AgentflowError):
    """Bad input from the user (a command line, spec, input or path): exit 2."""

    exit_code = EXIT_USAGE


class RunFailed(AgentflowError):
    """A run stopped at a failed node: exit 3; `--resume` continues it once the cause is fixed."""

    exit_code = EXIT_FAILED
