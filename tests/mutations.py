"""Random mutations of spec texts, shared by the fuzz test and the parser equivalence test."""
from __future__ import annotations

import random
import re

TOKENS = ["{", "}", "(", ")", "[", "]", "=", ".", ",", ";", "\"", '"""', "for", "repeat", "max", "until", "yield",
          "return", "after", "prev", "null", "if", "else", "in", "not", "?", "|", "0", "-1", "2m", "main", "str",
          "list[", "x"]
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def mutate(text: str, rng: random.Random, *, rename_share: float = 0.5, tight: bool = False,
           tokens: list[str] = TOKENS) -> str:
    """Random deletions, duplications, truncations, character swaps and insertions. A
    `rename_share` of the cases only swap names and numbers, which keeps the syntax and so
    reaches the checks; `tight` inserts tokens without surrounding blanks half the time."""
    if rng.random() < rename_share:
        words = IDENT.findall(text) or ["x"]
        for _ in range(rng.randint(1, 3)):
            spots = list(IDENT.finditer(text))
            if spots:
                m = rng.choice(spots)
                text = text[:m.start()] + rng.choice(words + ["prev", "0", "1", "iterations"]) + text[m.end():]
        return text
    for _ in range(rng.randint(1, 4)):
        if not text:
            return text
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randint(1, 40))
        op = rng.choice(["delete", "duplicate", "truncate", "swap", "insert", "insert", "line_dup", "line_del"])
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "truncate":
            text = text[:i]
        elif op == "swap" and j - i >= 2:
            text = text[:i] + text[j - 1] + text[i + 1:j - 1] + text[i] + text[j:]
        elif op == "insert":
            pad = (lambda: rng.choice(["", " "])) if tight else (lambda: " ")
            text = text[:i] + pad() + rng.choice(tokens) + pad() + text[i:]
        else:
            lines = text.split("\n")
            k = rng.randrange(len(lines))
            lines[k:k + 1] = [lines[k], lines[k]] if op == "line_dup" else []
            text = "\n".join(lines)
    return text
