"""Keys out of error text. A provider or an HTTP library may quote a key back in an error:
raw, JSON-escaped, URL-encoded, as a repr, or with its whitespace collapsed by whoever
tidied the text. Every such form of every configured key is masked before the text is
printed or stored, and before we tidy it ourselves."""
from __future__ import annotations

import json
from typing import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "[redacted]"
# Shorter values are not masked: replacing them would garble ordinary text.
MIN_SECRET_LENGTH = 4
# A variable whose name has one of these words (split on "_") holds a credential:
# OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...
SECRET_NAME_WORDS = frozenset({"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIALS"})


def is_secret_name(name: str) -> bool:
    return not SECRET_NAME_WORDS.isdisjoint(name.upper().split("_"))


def configured_secrets(environ: Mapping[str, str], key_variables: Iterable[str] = ()) -> set[str]:
    """The values of the variables named in `key_variables` (a role's `api_key_env`) and of
    every variable whose name says it holds a credential (the providers' own key variables)."""
    names = {name for name in environ if is_secret_name(name)} | set(key_variables)
    return {environ[name] for name in names if len(environ.get(name, "").strip()) >= MIN_SECRET_LENGTH}


def secret_forms(secret: str) -> set[str]:
    """The ways `secret` can be spelled in an error message."""
    forms = set()
    for value in {secret, secret.strip()}:
        forms |= {
            value,
            " ".join(value.split()),
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
            repr(value.encode())[2:-1],
            quote(value, safe=""),
            quote_plus(value, safe=""),
        }
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret masked, longest forms first (a form may
    contain a shorter one)."""
    forms = set().union(*(secret_forms(s) for s in secrets))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
