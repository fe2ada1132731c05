"""Source text -> AST, with syntax errors as E001/E002 diagnostics.

The LALR parser is built once per process from the grammar (Lark caches its tables on
disk); a non-recursive transformer turns the tree into AST nodes, so depth costs no stack.
"""
from __future__ import annotations

import re
import textwrap
from functools import lru_cache

from lark import Lark, Token, v_args
from lark.visitors import Transformer_NonRecursive
from lark.exceptions import VisitError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from agentflow.grammar import GRAMMAR_PATH

from . import ast
from .diagnostics import DiagnosticSink
from .source import SourceFile, Span

MAX_NESTING = 200
MAX_SYNTAX_ERRORS = 20
KEYWORDS = frozenset("defaults type tool role task choreography for in repeat max until yield return "
                     "after if else and or not true false null".split())
_DECL_START = re.compile(r"^(defaults|type|tool|role|choreography)\b", re.MULTILINE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


class NestingTooDeep(Exception):
    def __init__(self, span: Span) -> None:
        self.span = span


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR_PATH.read_text(), parser="lalr", lexer="basic", propagate_positions=True,
                maybe_placeholders=True, cache=True)


def _unescape(body: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


def string_value(token: str) -> str:
    """The value of a string literal as the language defines it (escapes, dedent)."""
    if token.startswith('"""'):
        lines = token[3:-3].split("\n")
        if lines and not lines[0].strip():
            lines = lines[1:]
        if lines and not lines[-1].strip():
            lines = lines[:-1]
        return _unescape(textwrap.dedent("\n".join(lines)))
    return _unescape(token[1:-1])


def _tok_span(tok: Token) -> Span:
    return Span(_ToAst.file, tok.start_pos, tok.end_pos, tok.line, tok.column, tok.end_line, tok.end_column)


def _meta_span(meta) -> Span:
    if getattr(meta, "empty", True):
        return Span(_ToAst.file, 0, 0, 0, 0, 0, 0)
    return Span(_ToAst.file, meta.start_pos, meta.end_pos, meta.line, meta.column, meta.end_line, meta.end_column)


def _present(items) -> tuple:
    return tuple(i for i in items if i is not None)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One method per grammar rule; builds frozen AST nodes and tracks expression depth."""

    file = "<input>"
    depth: dict[int, int] = {}

    # -- expression depth guard, so later recursive passes never overflow
    def _expr(self, node, *children):
        d = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        if d > MAX_NESTING:
            raise NestingTooDeep(node.span)
        self.depth[id(node)] = d
        return node

    # -- declarations
    def start(self, meta, items):
        return ast.Program(tuple(items), span=_meta_span(meta))

    def defaults(self, meta, attrs):
        return ast.DefaultsDecl(tuple(attrs), span=_meta_span(meta))

    def type_decl(self, meta, c):
        return ast.TypeDecl(str(c[0]), tuple(c[1:]), span=_meta_span(meta), name_span=_tok_span(c[0]))

    def field(self, meta, c):
        return ast.FieldDecl(str(c[0]), c[1], span=_meta_span(meta))

    def _signature(self, c):
        name, params, rest = c[0], c[1], c[2:]
        returns = rest[0] if rest and isinstance(rest[0], _Returns) else None
        body = rest[1:] if returns is not None else rest
        return name, params, (returns.type if returns else None), body

    def tool_decl(self, meta, c):
        name, params, returns, attrs = self._signature(c)
        return ast.ToolDecl(str(name), params, returns, tuple(attrs), span=_meta_span(meta), name_span=_tok_span(name))

    def task_decl(self, meta, c):
        name, params, returns, attrs = self._signature(c)
        return ast.TaskDecl(str(name), params, returns, tuple(attrs), span=_meta_span(meta), name_span=_tok_span(name))

    def role_decl(self, meta, c):
        members = c[1:]
        return ast.RoleDecl(str(c[0]), tuple(m for m in members if isinstance(m, ast.Attr)),
                            tuple(m for m in members if isinstance(m, ast.TaskDecl)),
                            span=_meta_span(meta), name_span=_tok_span(c[0]))

    def choreography(self, meta, c):
        name, params, returns, body = self._signature(c)
        return ast.ChoreographyDecl(str(name), params, returns, body[0], span=_meta_span(meta), name_span=_tok_span(name))

    def returns(self, meta, c):
        return _Returns(c[0])

    def params(self, meta, c):
        return _present(c)

    def param(self, meta, c):
        return ast.Param(str(c[0]), c[1], c[2] if len(c) > 2 else None, span=_meta_span(meta))

    def attr(self, meta, c):
        return ast.Attr(str(c[0]), c[1], span=_meta_span(meta), name_span=_tok_span(c[0]))

    # -- types
    def named_type(self, meta, c):
        return ast.NamedType(str(c[0]), span=_meta_span(meta))

    def generic_type(self, meta, c):
        return ast.GenericType(str(c[0]), c[1], span=_meta_span(meta))

    def optional_type(self, meta, c):
        return ast.OptionalType(c[0], span=_meta_span(meta))

    def literal_union(self, meta, c):
        return ast.LiteralUnion(tuple(string_value(str(t)) for t in c), span=_meta_span(meta))

    # -- statements
    def block(self, meta, c):
        return ast.Block(tuple(c), span=_meta_span(meta))

    def binding(self, meta, c):
        after = c[2] if len(c) > 2 and c[2] is not None else ()
        return ast.Binding(str(c[0]), c[1], after, span=_meta_span(meta), name_span=_tok_span(c[0]))

    def after(self, meta, c):
        return tuple(ast.AfterRef(str(t), span=_tok_span(t)) for t in c)

    def return_stmt(self, meta, c):
        return ast.Return(c[0], span=_meta_span(meta))

    def yield_stmt(self, meta, c):
        return ast.Yield(c[0], span=_meta_span(meta))

    # -- expressions
    def for_expr(self, meta, c):
        node = ast.ForExpr(str(c[0]), c[1], c[2], span=_meta_span(meta), var_span=_tok_span(c[0]))
        return self._expr(node, c[1], *(getattr(s, "value", None) for s in c[2].statements))

    def repeat_expr(self, meta, c):
        if len(c) == 2:  # `repeat until ...` without `max` (E404 in the checker)
            c = [None, *c]
        max_expr = c[0]
        node = ast.RepeatExpr(max_expr, c[1], c[2], span=_meta_span(meta))
        return self._expr(node, c[1], *(getattr(s, "value", None) for s in c[2].statements))

    def repeat_max(self, meta, c):
        return c[0]

    def conditional(self, meta, c):
        return self._expr(ast.Conditional(c[0], c[1], c[2], span=_meta_span(meta)), *c)

    def or_op(self, meta, c):
        return self._expr(ast.BinOp("or", c[0], c[1], span=_meta_span(meta)), *c)

    def and_op(self, meta, c):
        return self._expr(ast.BinOp("and", c[0], c[1], span=_meta_span(meta)), *c)

    def not_op(self, meta, c):
        return self._expr(ast.UnaryOp("not", c[0], span=_meta_span(meta)), c[0])

    def compare(self, meta, c):
        op = "not in" if c[1].type == "NOT_IN" else str(c[1])
        return self._expr(ast.BinOp(op, c[0], c[2], span=_meta_span(meta)), c[0], c[2])

    binop = compare

    def neg(self, meta, c):
        return self._expr(ast.UnaryOp("-", c[1], span=_meta_span(meta)), c[1])

    def attribute(self, meta, c):
        return self._expr(ast.Attribute(c[0], str(c[1]), span=_meta_span(meta), attr_span=_tok_span(c[1])), c[0])

    def index(self, meta, c):
        return self._expr(ast.Index(c[0], c[1], span=_meta_span(meta)), *c)

    def call(self, meta, c):
        args = c[1]
        return self._expr(ast.Call(c[0], args, span=_meta_span(meta)), c[0], *(a.value for a in args))

    def args(self, meta, c):
        return tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, span=a.span) for a in _present(c))

    def kwarg(self, meta, c):
        return ast.Arg(str(c[0]), c[1], span=_meta_span(meta))

    def name(self, meta, c):
        return ast.Name(str(c[0]), span=_tok_span(c[0]))

    def string(self, meta, c):
        return ast.Literal(string_value(str(c[0])), span=_tok_span(c[0]))

    def number(self, meta, c):
        text = str(c[0])
        return ast.Literal(float(text) if "." in text else int(text), span=_tok_span(c[0]))

    def duration(self, meta, c):
        text = str(c[0])
        unit = "ms" if text.endswith("ms") else text[-1]
        return ast.Duration(int(text[: -len(unit)]) * _DURATION_UNITS[unit], text, span=_tok_span(c[0]))

    def true(self, meta, c):
        return ast.Literal(True, span=_meta_span(meta))

    def false(self, meta, c):
        return ast.Literal(False, span=_meta_span(meta))

    def null(self, meta, c):
        return ast.Literal(None, span=_meta_span(meta))

    def list_lit(self, meta, c):
        items = _present(c)
        return self._expr(ast.ListExpr(items, span=_meta_span(meta)), *items)

    def comprehension(self, meta, c):
        cond = c[3] if len(c) > 3 else None
        node = ast.Comprehension(c[0], str(c[1]), c[2], cond, span=_meta_span(meta))
        return self._expr(node, c[0], c[2], cond)

    def record_field(self, meta, c):
        return ast.RecordField(str(c[0]), c[1], span=_tok_span(c[0]))

    def record_lit(self, meta, c):
        fields = _present(c)
        return self._expr(ast.RecordExpr(fields, span=_meta_span(meta)), *(f.value for f in fields))


class _Returns:
    """Marks the `-> Type` of a signature, which is optional."""
    __slots__ = ("type",)

    def __init__(self, type_: ast.TypeExpr) -> None:
        self.type = type_


# ---------------------------------------------------------------- errors in words

_TOKEN_WORDS = {
    "NAME": "a name", "STRING": "a string", "LONG_STRING": "a string", "NUMBER": "a number",
    "DURATION": "a duration", "COMP_OP": "a comparison operator", "NOT_IN": "`not in`",
    "PLUS": "`+`", "MINUS": "`-`", "MUL_OP": "an operator", "_SEP": "`,` or `;`", "$END": "end of file",
}
_EXPR_START = {"NAME", "STRING", "LONG_STRING", "NUMBER", "DURATION", "TRUE", "FALSE", "NULL",
               "LSQB", "LBRACE", "LPAR", "MINUS", "NOT", "FOR", "REPEAT"}
_BINARY_OPS = {"COMP_OP", "IN", "NOT_IN", "PLUS", "MINUS", "MUL_OP", "AND", "OR", "IF", "DOT", "LSQB", "LPAR"}


def _word(term: str) -> str:
    if term in _TOKEN_WORDS:
        return _TOKEN_WORDS[term]
    for t in _parser().terminals:
        if t.name == term and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return term.lower()


def _expected_words(expected: set[str]) -> str:
    expected = set(expected)
    words = []
    if {"NAME", "STRING", "NUMBER"} <= expected:
        expected -= _EXPR_START
        words.append("an expression")
    if len(expected & _BINARY_OPS) >= 4:
        expected -= _BINARY_OPS
        words.append("an operator")
    words += sorted({_word(t) for t in expected if not t.startswith("__")})
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _found_words(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if str(tok) in KEYWORDS:
        return f"keyword `{tok}`"
    kind = {"NAME": "name", "STRING": "string", "LONG_STRING": "string", "NUMBER": "number"}.get(tok.type)
    text = str(tok) if len(str(tok)) <= 30 else str(tok)[:27] + "..."
    return f"{kind} `{text}`" if kind else f"`{text}`"


def _report(err: UnexpectedInput, source: SourceFile, sink: DiagnosticSink) -> int:
    """Adds one E001/E002 diagnostic for a Lark error; returns the offset it occurred at."""
    text = source.text
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        char = text[pos]
        if char == '"':
            triple = text.startswith('"""', pos)
            end = len(text) if triple else (text.find("\n", pos) if "\n" in text[pos:] else len(text))
            sink.error("E002", "unterminated string", source.span(pos, pos + (3 if triple else 1)),
                       "this string is never closed",
                       help='close it with `"""`' if triple else 'close it with `"` on the same line, '
                       'or use `"""` for a string that spans lines')
            return end
        shown = repr(char)[1:-1] if not char.isprintable() else char
        sink.error("E001", f"unexpected character `{shown}`", source.span(pos, pos + 1), "not valid here")
        return pos + 1
    if isinstance(err, UnexpectedEOF):
        end = len(text)
        sink.error("E001", f"unexpected end of file, expected {_expected_words(err.expected)}",
                   source.span(end, end), "the file ends here")
        return end
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    start = tok.start_pos if tok.start_pos is not None else len(text)
    end = tok.end_pos if tok.end_pos is not None else start
    found = _found_words(tok)
    help_ = None
    if str(tok) in KEYWORDS and "NAME" in err.expected:
        help_ = f"`{tok}` is a reserved keyword; choose another name"
    sink.error("E001", f"unexpected {found}, expected {_expected_words(err.expected)}",
               source.span(start, end), "unexpected here", help=help_)
    return max(end, start + 1)


def parse(source: SourceFile, sink: DiagnosticSink) -> ast.Program | None:
    """Parses a whole file. On a syntax error it resumes at the next top-level
    declaration, so several independent mistakes are reported in one go."""
    _ToAst.file = source.name
    text = source.text
    program = None
    resume_at = 0
    for _ in range(MAX_SYNTAX_ERRORS):
        masked = text if resume_at == 0 else _blank(text[:resume_at]) + text[resume_at:]
        try:
            try:
                result = _ToAst().transform(_parser().parse(masked))
            except VisitError as err:
                raise err.orig_exc from None
            if resume_at == 0:
                program = result
            break
        except UnexpectedInput as err:
            failed_at = _report(err, source, sink)
        except NestingTooDeep as err:
            sink.error("E001", f"expression nested more than {MAX_NESTING} levels deep", err.span,
                       "too deeply nested", help="split it into named bindings")
            failed_at = err.span.end
        finally:
            _ToAst.depth.clear()
        nxt = _DECL_START.search(text, failed_at)
        if nxt is None:
            break
        resume_at = nxt.start()
    return program


def _blank(prefix: str) -> str:
    """Spaces in place of text, newlines kept, so later offsets and lines stay true."""
    return re.sub(r"[^\n]", " ", prefix)
