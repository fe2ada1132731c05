"""The table-driven parser (`_fast_parse`) builds exactly what Lark's own tree building plus
the `_ToAst` transformer builds: the same AST with the same spans, the same syntax errors,
and so the same diagnostics after error recovery."""
from __future__ import annotations

import dataclasses
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import LexerThread

from agentflow.compiler import parser as P
from agentflow.compiler.diagnostics import DiagnosticSink
from agentflow.compiler.source import SourceFile
from mutations import mutate

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "specs").glob("*.agentflow")) + sorted((ROOT / "tests" / "compiler" / "bad").glob("*.agentflow"))
TOKENS = ["{", "}", "(", ")", "[", "]", "=", ".", ",", ";", "\"", '"""', "for", "repeat", "max", "until",
          "yield", "return", "after", "null", "true", "if", "else", "in", "not in", "not", "and", "or", "?",
          "|", "0", "1.5", "-1", "2s", "main", "str", "list[", "x", "->", "+", "*", "==", "#", "@", "\n"]

EXTRA = {
    "empty": "",
    "only_comment": "# nothing\n",
    "parens": 'choreography main(a: int,) -> (int)? {\n x = ((a)).b[(a)](k=(1), (2),)\n y = (a) + -(b) * c\n'
              ' z = [ (a) for v in (xs) if (v) ]\n r = {a: (1), b: [],}\n w = [(1), (2),]\n'
              ' q = repeat until (done) { return (1) }\n return (z) if (a) else (w)\n}\n',
    "empty_bodies": 'defaults {}\ntype T {}\ntool t() {}\nrole r { task k() {} }\nchoreography c() { }\n',
    "literal_types": 'type T { a: "x" | "y"; b: "z"?; c: list[("q")]; d: ((int)) }\n',
    "deep_ok": "choreography c() { x = " + "(" * 150 + "1" + ")" * 150 + " }\n",
    "deep_bad": "choreography c() { x = " + "[" * 250 + "]" * 250 + " }\n",
    "deep_then_syntax": "choreography c() { x = " + "-" * 250 + "1 }\nchoreography d() { = }\n",
    "deep_not": "choreography c() { x = " + "not " * 240 + "a }\n",
    "deep_chain": "choreography c() { x = a" + " + a" * 230 + " }\n",
    "newlines": 'choreography c() {\r\n  x = """\n    a\n\t  b\n  """ # note\n\ty = a not\n   in b\n  z = "q"; w = 3ms\n}\n',
    "bad_char": "choreography c() { x = 1 @ 2 }\n",
    "eof": "choreography c() { x = ",
    "unterminated": 'choreography c() { x = "abc\n}\n',
}


def _dump(value):
    """Everything in a tree, spans included (they are excluded from AST equality)."""
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,
                tuple((f.name, _dump(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, (tuple, list)):
        return tuple(_dump(v) for v in value)
    return repr(value)


def _lark_path(text: str, builder: P._ToAst):
    """The reference: Lark's own tree building, then the transformer."""
    try:
        return builder.transform(P._parser().parse(text))
    except VisitError as err:
        raise err.orig_exc from None


def _outcome(fn, text: str):
    try:
        return ("ok", _dump(fn(text, P._ToAst("case.agentflow"))))
    except UnexpectedToken as err:
        tok = err.token
        return ("token", tok.type, str(tok), tok.start_pos, tok.line, tok.column, tok.end_pos, sorted(err.expected))
    except UnexpectedCharacters as err:
        return ("chars", err.pos_in_stream, err.line, err.column)
    except UnexpectedInput as err:
        return ("input", type(err).__name__, repr(err))
    except P.NestingTooDeep as err:
        return ("deep", _dump(err.span))


def _tokens(tokens):
    out = []
    try:
        for t in tokens:
            out.append((t.type, str(t), t.start_pos, t.line, t.column, t.end_pos, t.end_line, t.end_column))
    except UnexpectedCharacters as err:
        out.append(("chars", err.pos_in_stream, err.line, err.column, sorted(err.allowed),
                    [str(t) for t in err.token_history or ()]))
    return out


def _diagnosed(text: str):
    sink = DiagnosticSink()
    program = P.parse(SourceFile("case.agentflow", text), sink)
    return _dump(program), repr(sink.diagnostics)


def _cases():
    cases = [(p.name, p.read_text()) for p in SEEDS] + list(EXTRA.items())
    rng = random.Random(20240611)
    for path in SEEDS:
        base = path.read_text()
        for k in range(400 // len(SEEDS) + 1):
            cases.append((f"{path.stem}~{k}", mutate(base, rng, rename_share=0.3, tight=True, tokens=TOKENS)))
    return cases


CASES = _cases()


def test_case_count():
    assert len(CASES) >= 400
    assert sum(1 for _, text in CASES if _outcome(P._fast_parse, text)[0] != "ok") >= 100


@pytest.mark.parametrize("name,text", CASES, ids=[c[0] for c in CASES])
def test_fast_path_matches_lark_tree_building(name, text, monkeypatch):
    assert _outcome(P._fast_parse, text) == _outcome(_lark_path, text)
    # and the whole parse(), error recovery included, reports the same diagnostics
    fast = _diagnosed(text)
    monkeypatch.setattr(P, "_fast_parse", _lark_path)
    assert _diagnosed(text) == fast


@pytest.mark.parametrize("name,text", CASES, ids=[c[0] for c in CASES])
def test_lexing_loop_matches_lark_lexer(name, text):
    lexer = P._fast_tables()[-1]
    assert _tokens(P._lex(lexer, text)) == _tokens(P._with_end(LexerThread.from_text(lexer, text).lex(None)))


def test_parses_in_threads_at_once_match_sequential_parses():
    """Each parse keeps its file name and nesting depths to itself: two files parsed in
    threads at once (one deep, one with syntax errors after deep nesting) give the ASTs,
    spans and diagnostics they give one at a time."""
    files = [("review.agentflow", (ROOT / "specs" / "research_report.agentflow").read_text() + EXTRA["deep_ok"]),
             ("broken.agentflow", EXTRA["deep_then_syntax"] + EXTRA["deep_not"] + EXTRA["deep_bad"])]

    def parsed(name: str, text: str):
        sink = DiagnosticSink()
        return _dump(P.parse(SourceFile(name, text), sink)), repr(sink.diagnostics)

    expected = [parsed(*f) for f in files]
    rounds = 60
    start = threading.Barrier(len(files))

    def worker(name: str, text: str) -> list:
        start.wait()
        return [parsed(name, text) for _ in range(rounds)]

    with ThreadPoolExecutor(len(files)) as pool:
        results = list(pool.map(lambda f: worker(*f), files))
    for want, got in zip(expected, results):
        assert got == [want] * rounds
