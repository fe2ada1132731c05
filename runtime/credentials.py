"""Credential preflight: before any node runs, every model the run will call must find its
key, so that a missing key is one clear message and exit 2, not a failed node after a
request and its retries.

The rule, per role the entry can reach (its calls and their delegations), with its model
after `--model`, `scripted` and `human` models skipped:
- a role with `api_key_env` needs that variable set and non-empty (it is the key sent);
- any other role needs the key variables litellm names for the model's provider
  (`litellm.validate_environment`), e.g. OPENAI_API_KEY for openai/...; an `api_base` does not
  waive them, as litellm's clients refuse to call without a key even a server that ignores
  it. A keyless server is reached with a provider that needs none (e.g. hosted_vllm/...) or
  with any value in the variable.
litellm is imported only when some role relies on its provider's variables."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from agentflow.compiler import schema
from agentflow.compiler.errors import UsageError

from .human import is_human
from .models import ModelError, is_scripted, load_litellm, missing_key_message
from .redaction import is_secret_name


class CredentialError(UsageError):
    """A model of the run has no key (exit 2)."""


@dataclass(frozen=True)
class ModelUse:
    """One role calling one model, with what the call takes its key from."""

    model: str
    role: str
    api_key_env: str | None
    api_base: str | None


def called_tasks(plan: schema.Plan) -> set[str]:
    """The tasks a run of `plan` can call: its task nodes and, transitively, their delegations."""
    pending = [node["target"] for node in plan["nodes"].values() if node["kind"] == "task"]
    called: set[str] = set()
    while pending:
        task = pending.pop()
        if task not in called:
            called.add(task)
            pending += [t["delegate"] for t in plan["tasks"][task]["definition"]["tools"] if "delegate" in t]
    return called


def model_uses(plan: schema.Plan, model_override: str | None) -> list[ModelUse]:
    """The non-scripted models the run will call, one entry per role and model."""
    uses = set()
    for task in called_tasks(plan):
        entry = plan["tasks"][task]
        model = entry["definition"]["model"]
        if is_human(model):  # a person needs no key, and `--model` does not replace one
            continue
        model = model_override or model
        if model and not is_scripted(model):
            uses.add(ModelUse(model, entry["definition"]["role"], entry["api_key_env"], entry["api_base"]))
    return sorted(uses, key=lambda u: (u.model, u.role))


def provider_key_variables(use: ModelUse) -> list[str]:
    """The key variables litellm says `use`'s provider needs and the environment lacks."""
    try:
        litellm = load_litellm()
    except ModelError as err:  # a broken installation: one line and exit 2, before anything runs
        raise CredentialError(str(err)) from None
    report = litellm.validate_environment(model=use.model, api_base=use.api_base)
    return [name for name in report.get("missing_keys", []) if is_secret_name(name)]


def missing_variables(use: ModelUse) -> list[str]:
    if use.api_key_env:
        return [] if os.environ.get(use.api_key_env) else [use.api_key_env]
    return provider_key_variables(use)


def check_credentials(plan: schema.Plan, model_override: str | None) -> None:
    """Raise CredentialError naming every missing variable, its model and roles."""
    roles_by_need: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for use in model_uses(plan, model_override):
        missing = missing_variables(use)
        if missing:
            roles_by_need[(use.model, tuple(missing))].append(use.role)
    if roles_by_need:
        raise CredentialError("; ".join(missing_key_message(model, roles, list(variables))
                                        for (model, variables), roles in sorted(roles_by_need.items())))
