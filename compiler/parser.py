"""Source text -> AST, with syntax errors as E001/E002 and nesting past the limit as E003.

The LALR parser is built once per process from the grammar (Lark caches its tables on
disk). `_fast_parse` drives Lark's LALR table over Lark's lexer and builds AST nodes at each
reduction with the `_ToAst` methods, exactly as Lark's tree building followed by the
`_ToAst` transformer would (tests/compiler/test_parser.py checks it); no stack grows with depth.
"""
from __future__ import annotations

import re
import textwrap
from functools import lru_cache
from typing import Any, Iterable

from lark import Lark, Token, Tree, v_args
from lark.lexer import BasicLexer, LexerThread, UnlessCallback
from lark.parsers.lalr_analysis import Shift
from lark.tree import Meta
from lark.visitors import Transformer_NonRecursive
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from agentflow.grammar import GRAMMAR_PATH

from . import ast
from .codes import Code
from .diagnostics import DiagnosticSink, Label
from .source import SourceFile, Span

MAX_NESTING = 100  # levels of expressions and types; later passes recurse once per level
MAX_OPEN = 10_000  # constructs open at once (brackets included): bounds the parser's stacks
MAX_SYNTAX_ERRORS = 20
KEYWORDS = frozenset("defaults type tool role task choreography for in repeat max until yield return "
                     "after if else and or not true false null".split())
_DECL_START = re.compile(r"^(defaults|type|tool|role|choreography)\b", re.MULTILINE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_PLACEHOLDER = "\ud800"


class NestingTooDeep(Exception):
    """An expression or type nested past MAX_NESTING, or more than MAX_OPEN constructs
    open at once (`what` says which: a key of _NESTING_WORDS)."""

    def __init__(self, span: Span, what: str = "expression") -> None:
        self.span = span
        self.what = what


@lru_cache(maxsize=2)
def _parser(start: str = "start") -> Lark:
    """The parser of a whole file (`start`), or of a program's choreography body (`program_body`)."""
    return Lark(GRAMMAR_PATH.read_text(), parser="lalr", lexer="basic", propagate_positions=True,
                maybe_placeholders=True, cache=True, start=start)


def _unescape(body: str) -> str:
    """The escapes of a string resolved: by whole-string replaces, linear and in C, with
    `\\\\` parked in a placeholder first so that the backslash it leaves starts no escape.
    The placeholder is a lone surrogate, which text decoded from UTF-8 never holds; text
    that does hold one takes the slower per-escape path."""
    if "\\" not in body:
        return body
    if _PLACEHOLDER in body:
        return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)
    return (body.replace("\\\\", _PLACEHOLDER).replace('\\"', '"').replace("\\n", "\n")
            .replace("\\t", "\t").replace(_PLACEHOLDER, "\\"))


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


def _tok_span(file: str, tok: Token) -> Span:
    # lark types a token's positions optional; a lexed token has them all
    return Span(file, tok.start_pos, tok.end_pos, tok.line, tok.column, tok.end_line, tok.end_column)  # type: ignore[arg-type]


def _meta_span(file: str, meta) -> Span:
    """The span of a reduction: from Lark's Meta, or from the (first, last) tokens that the
    fast path gives instead."""
    if type(meta) is tuple:
        first, last = meta
        return Span(file, first.start_pos, last.end_pos, first.line, first.column,
                    last.end_line, last.end_column)
    if getattr(meta, "empty", True):
        return Span(file, 0, 0, 0, 0, 0, 0)
    return Span(file, meta.start_pos, meta.end_pos, meta.line, meta.column, meta.end_line, meta.end_column)


# A Span made from its fields as one tuple: what Span(...) does, without its Python-level __new__
_new_span = tuple.__new__


def _present(items) -> tuple:
    return tuple(i for i in items if i is not None)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One method per grammar rule; builds frozen AST nodes and tracks expression and type depth.
    One instance per parse: its file name and depths are that parse's own (parses may run in
    threads at once)."""

    def __init__(self, file: str = "<input>") -> None:
        super().__init__()
        self.file = file
        self.depth: dict[int, int] = {}  # id(node) -> its nesting depth

    def _span(self, meta) -> Span:
        if type(meta) is tuple:  # the fast path's (first, last) tokens: _meta_span's common case, inline
            first, last = meta
            return _new_span(Span, (self.file, first.start_pos, last.end_pos, first.line, first.column,
                                    last.end_line, last.end_column))
        return _meta_span(self.file, meta)

    def _tok_span(self, tok: Token) -> Span:
        # _tok_span inline: the parser makes one per token it keeps
        return _new_span(Span, (self.file, tok.start_pos, tok.end_pos, tok.line, tok.column, tok.end_line,
                                tok.end_column))

    # -- depth guards, so later recursive passes never overflow
    def _nested(self, node, *children, what: str = "expression"):
        depth = self.depth
        d = 0
        for c in children:
            x = depth.get(id(c), 0)
            if x > d:
                d = x
        d += 1
        if d > MAX_NESTING:
            raise NestingTooDeep(node.span, what)
        self.depth[id(node)] = d
        return node

    # -- declarations
    def start(self, meta, items):
        return ast.Program(tuple(items), span=self._span(meta))

    def program_body(self, meta, c):
        return c[0]

    def defaults(self, meta, attrs):
        return ast.DefaultsDecl(tuple(attrs), span=self._span(meta))

    def type_decl(self, meta, c):
        return ast.TypeDecl(str(c[0]), tuple(c[1:]), span=self._span(meta), name_span=self._tok_span(c[0]))

    def field(self, meta, c):
        return ast.FieldDecl(str(c[0]), c[1], span=self._span(meta))

    def _signature(self, c):
        name, params, rest = c[0], c[1], c[2:]
        returns = rest[0] if rest and isinstance(rest[0], _Returns) else None
        body = rest[1:] if returns is not None else rest
        return name, params, (returns.type if returns else None), body

    def tool_decl(self, meta, c):
        name, params, returns, attrs = self._signature(c)
        return ast.ToolDecl(str(name), params, returns, tuple(attrs), span=self._span(meta),
                            name_span=self._tok_span(name))

    def task_decl(self, meta, c):
        name, params, returns, attrs = self._signature(c)
        return ast.TaskDecl(str(name), params, returns, tuple(attrs), span=self._span(meta),
                            name_span=self._tok_span(name))

    def role_decl(self, meta, c):
        members = c[1:]
        return ast.RoleDecl(str(c[0]), tuple(m for m in members if isinstance(m, ast.Attr)),
                            tuple(m for m in members if isinstance(m, ast.TaskDecl)),
                            span=self._span(meta), name_span=self._tok_span(c[0]))

    def choreography(self, meta, c):
        name, params, returns, body = self._signature(c)
        return ast.ChoreographyDecl(str(name), params, returns, body[0], span=self._span(meta),
                                    name_span=self._tok_span(name))

    def returns(self, meta, c):
        return _Returns(c[0])

    def params(self, meta, c):
        return _present(c)

    def param(self, meta, c):
        return ast.Param(str(c[0]), c[1], c[2] if len(c) > 2 else None, span=self._span(meta))

    def attr(self, meta, c):
        return ast.Attr(str(c[0]), c[1], span=self._span(meta), name_span=self._tok_span(c[0]))

    # -- types
    def named_type(self, meta, c):
        return ast.NamedType(str(c[0]), span=self._span(meta))

    def generic_type(self, meta, c):
        return self._nested(ast.GenericType(str(c[0]), c[1], span=self._span(meta)), c[1], what="type")

    def optional_type(self, meta, c):
        return self._nested(ast.OptionalType(c[0], span=self._span(meta)), c[0], what="type")

    def literal_union(self, meta, c):
        return ast.LiteralUnion(tuple(string_value(str(t)) for t in c), span=self._span(meta))

    # -- statements
    def block(self, meta, c):
        return ast.Block(tuple(c), span=self._span(meta))

    def binding(self, meta, c):
        after = c[2] if len(c) > 2 and c[2] is not None else ()
        return ast.Binding(str(c[0]), c[1], after, span=self._span(meta), name_span=self._tok_span(c[0]))

    def after(self, meta, c):
        return tuple(ast.AfterRef(str(t), span=self._tok_span(t)) for t in c)

    def return_stmt(self, meta, c):
        return ast.Return(c[0], span=self._span(meta))

    def yield_stmt(self, meta, c):
        return ast.Yield(c[0], span=self._span(meta))

    # -- expressions
    def for_expr(self, meta, c):
        node = ast.ForExpr(str(c[0]), c[1], c[2], span=self._span(meta), var_span=self._tok_span(c[0]))
        return self._nested(node, c[1], *(getattr(s, "value", None) for s in c[2].statements))

    def repeat_expr(self, meta, c):
        if len(c) == 2:  # `repeat until ...` without `max` (E404 in the checker)
            c = [None, *c]
        max_expr = c[0]
        node = ast.RepeatExpr(max_expr, c[1], c[2], span=self._span(meta))
        return self._nested(node, c[1], *(getattr(s, "value", None) for s in c[2].statements))

    def repeat_max(self, meta, c):
        return c[0]

    def conditional(self, meta, c):
        return self._nested(ast.Conditional(c[0], c[1], c[2], span=self._span(meta)), *c)

    def or_op(self, meta, c):
        return self._nested(ast.BinOp("or", c[0], c[1], span=self._span(meta)), *c)

    def and_op(self, meta, c):
        return self._nested(ast.BinOp("and", c[0], c[1], span=self._span(meta)), *c)

    def not_op(self, meta, c):
        return self._nested(ast.UnaryOp("not", c[0], span=self._span(meta)), c[0])

    def compare(self, meta, c):
        op = "not in" if c[1].type == "NOT_IN" else str(c[1])
        return self._nested(ast.BinOp(op, c[0], c[2], span=self._span(meta)), c[0], c[2])

    binop = compare

    def neg(self, meta, c):
        return self._nested(ast.UnaryOp("-", c[1], span=self._span(meta)), c[1])

    def attribute(self, meta, c):
        return self._nested(ast.Attribute(c[0], str(c[1]), span=self._span(meta), attr_span=self._tok_span(c[1])), c[0])

    def index(self, meta, c):
        return self._nested(ast.Index(c[0], c[1], span=self._span(meta)), *c)

    def call(self, meta, c):
        args = c[1]
        return self._nested(ast.Call(c[0], args, span=self._span(meta)), c[0], *(a.value for a in args))

    def args(self, meta, c):
        return tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, span=a.span) for a in _present(c))

    def kwarg(self, meta, c):
        return ast.Arg(str(c[0]), c[1], span=self._span(meta))

    def name(self, meta, c):
        return ast.Name(str(c[0]), span=self._tok_span(c[0]))

    def string(self, meta, c):
        return ast.Literal(string_value(str(c[0])), span=self._tok_span(c[0]))

    def number(self, meta, c):
        text = str(c[0])
        return ast.Literal(float(text) if "." in text else int(text), span=self._tok_span(c[0]))

    def duration(self, meta, c):
        text = str(c[0])
        unit = "ms" if text.endswith("ms") else text[-1]
        return ast.Duration(int(text[: -len(unit)]) * _DURATION_UNITS[unit], text, span=self._tok_span(c[0]))

    def true(self, meta, c):
        return ast.Literal(True, span=self._span(meta))

    def false(self, meta, c):
        return ast.Literal(False, span=self._span(meta))

    def null(self, meta, c):
        return ast.Literal(None, span=self._span(meta))

    def list_lit(self, meta, c):
        items = _present(c)
        return self._nested(ast.ListExpr(items, span=self._span(meta)), *items)

    def comprehension(self, meta, c):
        cond = c[3] if len(c) > 3 else None
        node = ast.Comprehension(c[0], str(c[1]), c[2], cond, span=self._span(meta))
        return self._nested(node, c[0], c[2], cond)

    def record_field(self, meta, c):
        return ast.RecordField(str(c[0]), c[1], span=self._tok_span(c[0]))

    def record_lit(self, meta, c):
        fields = _present(c)
        return self._nested(ast.RecordExpr(fields, span=self._span(meta)), *(f.value for f in fields))


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


def _expected_words(expected: Iterable[str]) -> str:
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
    kind = {"NAME": "name", "STRING": "string", "LONG_STRING": "triple-quoted string",
            "NUMBER": "number"}.get(tok.type)
    text = str(tok) if len(str(tok)) <= 30 else str(tok)[:27] + "..."
    return f"{kind} `{text}`" if kind else f"`{text}`"


def _report(err: UnexpectedInput, source: SourceFile, parsed: str, sink: DiagnosticSink) -> int:
    """Adds one E001/E002 diagnostic for a Lark error in `parsed` (the source's text, or
    the part of it after an earlier error); returns the offset it occurred at."""
    text = source.text
    if isinstance(err, UnexpectedCharacters):
        pos: int = err.pos_in_stream  # type: ignore[assignment]  # lark declares it None, then sets it
        char = text[pos]
        if char == '"':
            triple = text.startswith('"""', pos)
            end = len(text) if triple else (text.find("\n", pos) if "\n" in text[pos:] else len(text))
            sink.report(Code.E002, "unterminated string", source.span(pos, pos + (3 if triple else 1)),
                        "this string is never closed",
                        help='close it with `"""`' if triple else 'close it with `"` on the same line, '
                        'or use `"""` for a string that spans lines')
            return end
        glued = _NUMBER_AND_WORD.match(text, pos)
        if glued:
            sink.report(Code.E001, f"`{glued.group(0)}` is neither a number nor a duration",
                        source.span(pos, glued.end()), "not a number or a duration",
                        help=_duration_help(glued.group(1), glued.group(2)))
            return glued.end()
        shown = repr(char)[1:-1] if not char.isprintable() else char
        sink.report(Code.E001, f"unexpected character `{shown}`", source.span(pos, pos + 1), "not valid here")
        return pos + 1
    if isinstance(err, UnexpectedEOF):
        end = len(text)
        sink.report(Code.E001, f"unexpected end of file, expected {_expected_words(err.expected)}",
                    source.span(end, end), "the file ends here")
        return end
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    start = tok.start_pos if tok.start_pos is not None else len(text)
    end = tok.end_pos if tok.end_pos is not None else start
    label, secondary, help_ = "unexpected here", [], _token_help(tok, err.expected, text, start, end)
    if tok.type == "$END":  # it borrows the last token's position: point just after it
        start = end = tok.end_pos if tok.end_pos is not None else len(text)
        label = "the file ends here"
        opener = _unclosed_bracket(parsed)
        if opener is not None:
            secondary.append(Label(_tok_span(source.name, opener), f"this `{opener}` is never closed"))
            help_ = help_ or f"close it with `{_CLOSER_TEXT[opener.type]}`"
    sink.report(Code.E001, f"unexpected {_found_words(tok)}, expected {_expected_words(err.expected)}",
                source.span(start, end), label, secondary=secondary, help=help_)
    return max(end, start + 1)


_CLOSERS = {"LBRACE": "RBRACE", "LSQB": "RSQB", "LPAR": "RPAR"}
_CLOSER_TEXT = {"LBRACE": "}", "LSQB": "]", "LPAR": ")"}


def _unclosed_bracket(text: str) -> Token | None:
    """The innermost `{`, `[` or `(` still open at the end of `text` (which lexes: the
    parser reached its end)."""
    still_open: list[Token] = []
    for tok in _lex(_fast_tables()[-1], text):
        if tok.type in _CLOSERS:
            still_open.append(tok)
        elif still_open and tok.type == _CLOSERS[still_open[-1].type]:
            still_open.pop()
    return still_open[-1] if still_open else None


_UNIT_WORDS = {"ms": "ms", "millis": "ms", "millisecond": "ms", "milliseconds": "ms", "s": "s", "sec": "s",
               "secs": "s", "second": "s", "seconds": "s", "m": "m", "min": "m", "mins": "m", "minute": "m",
               "minutes": "m", "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h"}
_AFTER_LIST = re.compile(r"\bafter\s+\w+(?:\s*,\s*\w+)+\s*$")
_NUMBER_AND_WORD = re.compile(r"([0-9]+)(?:\.[0-9]+)?([A-Za-z_][A-Za-z0-9_]*)")
_SPACED_DURATION = re.compile(r"(?<![\w.])([0-9]+)[ \t]+(" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True))
                              + r")\s*$", re.IGNORECASE)


def _duration_help(number: str, word: str) -> str:
    """How durations are written, with the one the user probably meant."""
    unit = _UNIT_WORDS.get(word.lower())
    example = f"`{number}{unit}`" if unit else "`2m`"
    return f"a duration is an integer followed by `ms`, `s`, `m` or `h`, with no space: {example}"


def _token_help(tok: Token, expected: set[str], text: str, start: int, end: int) -> str | None:
    """A help line for the mistakes that are easy to name: a keyword used as a name,
    `=` for `==`, a statement after `after a,`, and a duration written with a space or a
    word for its unit (`2 minutes`:
    the error is at `minutes`, or at what follows when `minutes` could start an attribute)."""
    if str(tok) in KEYWORDS and "NAME" in expected:
        return f"`{tok}` is a reserved keyword; choose another name"
    window = max(0, start - 80)
    if tok.type == "EQUAL" and "COMP_OP" in expected:
        return "to compare, write `==`; a single `=` binds a name"
    if tok.type == "EQUAL" and _AFTER_LIST.search(text, window, start):
        return "an `after` list takes every name that follows a `,`: end it with `;` or a new line"
    spaced = _SPACED_DURATION.search(text, window, start) or \
        (tok.type == "NAME" and _SPACED_DURATION.search(text, window, end))
    return _duration_help(spaced.group(1), spaced.group(2)) if spaced else None


# ---------------------------------------------------------------- table-driven fast path
#
# Lark's tree building (a Tree with a Meta per reduction, then a transformer pass) dominates
# parse time. Instead we drive Lark's own LALR table over Lark's own lexer and, at each Reduce,
# build the AST node directly with the `_ToAst` method, reproducing what Lark's parse-tree
# builder does for the grammar: anonymous-token filtering, `[ ]` placeholders, `_rule` and
# `?rule` inlining, aliases and propagate_positions (including its "container" positions,
# so that e.g. `(a).b` starts at the parenthesis). test_parser.py checks that both paths
# build identical ASTs, spans included.

# Positions on the fast path: per stack value, the (first, last) tokens it covers, or None
# when it covers no text. A builder gets them as its `meta` (see _meta_span).
_EMPTY_META = Meta()  # empty=True, like a reduction that covers no text

_UNIT, _INLINE, _NODE = 0, 1, 2                     # what a reduction builds
_ALL, _PICK, _GENERAL = 0, 1, 2                     # how its children are filtered
_SHIFT, _UNIT_REDUCE, _REDUCE = 0, 1, 2             # the actions of the table


@lru_cache(maxsize=2)
def _fast_tables(start: str = "start"):
    """(states, start state, end state, lexer): Lark's LALR table, with each Reduce's rule
    replaced by a precomputed description of how Lark's tree builder treats that rule."""
    lark = _parser(start)
    table = lark.parser.parser.parser.parse_table
    infos = {}
    for rule in lark.rules:
        expansion = rule.expansion
        opts = rule.options
        size = len(expansion)
        # -- as parse_tree_builder.maybe_create_child_filter (maybe_placeholders=True)
        if opts.empty_indices:
            bits = "".join(str(int(b)) for b in opts.empty_indices)
            empty_indices = [len(ones) for ones in bits.split("0")]
        else:
            empty_indices = [0] * (size + 1)
        include = []
        nones = 0
        for i, sym in enumerate(expansion):
            nones += empty_indices[i]
            if opts.keep_all_tokens or not (sym.is_term and sym.filter_out):  # type: ignore[attr-defined]  # on lark's Terminal
                include.append((i, (not sym.is_term) and sym.name.startswith("_"), nones))
                nones = 0
        trailing = nones + empty_indices[size]
        if any(expand or n for _, expand, n in include):
            fmode = _GENERAL
        elif [i for i, _, _ in include] == list(range(size)):
            fmode = _ALL
        else:
            fmode = _PICK
        picks = tuple(i for i, _, _ in include)
        # -- as ExpandSingleChild (`?rule` without an alias) and the user callback
        expand1 = bool(opts.expand1 and not rule.alias)
        name = rule.alias or opts.template_source or rule.origin.name
        fn = None
        if rule.origin.name.startswith("_"):
            if expand1:
                raise NotImplementedError("inlined ?_rule")  # not used by the grammar
            kind = _INLINE  # a list, spliced into the parent's children
        elif expand1 and size == 1 and fmode == _ALL and not trailing:
            kind = _UNIT    # `?a: b` is b itself, and b's positions are unchanged
        else:
            kind = _NODE
            method = _ToAst.__dict__.get(name)
            if method is not None:
                fn = method.base_func  # called with the parse's own `_ToAst` as `self`
        # -- propagate_positions: a terminal at either end is always the first/last position
        first_i = 0 if size and expansion[0].is_term else -1
        last_i = size - 1 if size and expansion[-1].is_term else -1
        infos[rule] = (kind, size, rule.origin.name, fmode, picks, tuple(include), trailing,
                       expand1, name, fn, first_i, last_i)
    # actions: state -> terminal -> (_SHIFT, next state) | (_UNIT_REDUCE, rule name) | (_REDUCE, info);
    # gotos: state -> rule name -> next state
    actions, gotos = {}, {}
    for state, row in table.states.items():
        actions[state] = {t: (_SHIFT, arg) if action is Shift else
                          (_UNIT_REDUCE, arg.origin.name) if infos[arg][0] == _UNIT else (_REDUCE, infos[arg])
                          for t, (action, arg) in row.items() if t.isupper()}
        gotos[state] = {t: arg for t, (action, arg) in row.items() if not t.isupper()}
        assert all(action is Shift for t, (action, arg) in row.items() if not t.isupper())
    return actions, gotos, table.start_states[start], table.end_states[start], lark.parser.lexer


@lru_cache(maxsize=1)
def _token_regexes(lexer) -> tuple[re.Pattern, re.Pattern] | None:
    """(ignored, token) for `_lex`, or None for a lexer it does not reproduce.

    `token` is Lark's alternation of terminals (its order, its flags) preceded by `ignored`:
    a run of ignored terminals (blanks, comments), each allowed only where no terminal
    before it in Lark's order matches, which is where Lark's scanner would pick it. The run
    is atomic, so a token never starts inside it. One match per token, not one per token
    and one per blank."""
    scanner = lexer.scanner
    if type(lexer) is not BasicLexer or len(scanner._mres) != 1 or lexer.ignore_types & set(lexer.callback) \
            or any(type(cb) is not UnlessCallback for cb in lexer.callback.values()):
        return None  # pragma: no cover - the grammar uses lexer="basic", keywords as its only callbacks
    (alternation,) = scanner._mres
    terminals = scanner.terminals
    guarded = []
    for i, t in enumerate(terminals):
        if t.name in lexer.ignore_types:
            own = t.pattern.to_regexp()
            earlier = "|".join(e.pattern.to_regexp() for e in terminals[:i])
            # its own lookahead first: where it cannot match, the others need no trying
            guarded.append(f"(?=(?:{own}))(?!{earlier})(?:{own})" if earlier else f"(?:{own})")
    ignored = f"(?>(?:{'|'.join(guarded)})*)"
    return re.compile(ignored, alternation.flags), re.compile(f"{ignored}(?:{alternation.pattern})", alternation.flags)


def _lex(lexer, text: str):
    """The tokens of `text`, then `$END` as Lark's LALR parser makes it.

    This is BasicLexer.next_token as one generator, with the lexer's own terminals (its
    compiled alternation, in its order), its keyword callbacks (memoised per name) and its
    ignore and newline sets: the same tokens, positions and UnexpectedCharacters, at half
    the cost of Lark's loop. A lexer of another kind goes through Lark's own lexing loop."""
    regexes = _token_regexes(lexer)
    if regexes is None:  # pragma: no cover
        yield from _with_end(LexerThread.from_text(lexer, text).lex(None))
        return
    ignored, token_re = regexes
    newline_types = lexer.newline_types
    keywords: dict[str, tuple[Any, dict[str, str]]] = {type_: (cb.scanner.fullmatch, {}) for type_, cb in lexer.callback.items()}
    new_token = Token._future_new
    pos = line_start = 0
    line = 1
    token = None
    for m in iter(token_re.scanner(text).match, None):  # type: ignore[attr-defined]  # typeshed lacks Pattern.scanner
        type_ = m.lastgroup
        start = m.start(type_)
        if start != pos:
            newlines = text.count("\n", pos, start)
            if newlines:
                line += newlines
                line_start = text.rindex("\n", pos, start) + 1
        pos = m.end()
        value = text[start:pos]
        start_line, start_column = line, start - line_start + 1
        if type_ in newline_types:
            newlines = value.count("\n")
            if newlines:
                line += newlines
                line_start = start + value.rindex("\n") + 1
        keyword = keywords.get(type_)
        if keyword is not None:  # a name that is a keyword, `,` that is a comma
            fullmatch, seen = keyword
            retyped = seen.get(value)
            if retyped is None:
                retyped = seen[value] = fullmatch(value) or type_
            type_ = retyped
        token = new_token(type_, value, start, start_line, start_column, line, pos - line_start + 1, pos)
        yield token
    blank = ignored.match(text, pos)
    assert blank is not None, "the ignored pattern matches the empty string"
    stop = blank.end()
    if stop < len(text):
        newlines = text.count("\n", pos, stop)
        if newlines:
            line += newlines
            line_start = text.rindex("\n", pos, stop) + 1
        raise UnexpectedCharacters(text, stop, line, stop - line_start + 1,
                                   allowed=(lexer.scanner.allowed_types - lexer.ignore_types) or {"<END-OF-FILE>"},
                                   token_history=token and [token], terminals_by_name=lexer.terminals_by_name)
    yield Token.new_borrow_pos("$END", "", token) if token else Token("$END", "", 0, 1, 1)


def _with_end(tokens):
    token = None
    for token in tokens:
        yield token
    yield Token.new_borrow_pos("$END", "", token) if token else Token("$END", "", 0, 1, 1)


def _after_unit_reductions(actions, gotos, below: int, top: int, ttype: str) -> int:
    """The state a chain of unit reductions (`?a: b`) ends in: it depends only on the state
    below the top, the top state and the lookahead, so the parser memoises it."""
    step = actions[top].get(ttype)
    while step is not None and step[0] == _UNIT_REDUCE:
        top = gotos[below][step[1]]
        step = actions[top].get(ttype)
    return top


def _fast_parse(text: str, builder: _ToAst, start: str = "start"):
    """`builder.transform(_parser().parse(text))`, with the same result and the same
    exceptions, without building the parse tree; and NestingTooDeep when more than
    MAX_OPEN constructs are open at once, where Lark's stacks would grow without bound."""
    actions, gotos, start_state, end_state, lexer = _fast_tables(start)
    state = start_state
    state_stack = [state]
    value_stack: list = []
    pos_stack: list = []    # per value, its (first, last) tokens, or None (see _EMPTY_META)
    unit_chains: dict[tuple[int, int, str], int] = {}
    failure = None          # the first exception from a builder, raised if the parse succeeds
    Token_ = Token

    for token in _lex(lexer, text):
        ttype = token.type
        while True:
            try:
                action, arg = actions[state][ttype]
            except KeyError:
                if ttype == "$END" and state == end_state:
                    if failure is not None:
                        raise failure from None
                    return value_stack[-1]
                raise UnexpectedToken(token, set(actions[state])) from None
            if action == _SHIFT:
                state = arg
                state_stack.append(state)
                value_stack.append(token)
                pos_stack.append((token, token))
                if len(state_stack) > MAX_OPEN:
                    raise NestingTooDeep(builder._tok_span(token), "open")
                break
            if action == _UNIT_REDUCE:
                key = (state_stack[-2], state, ttype)
                top = unit_chains.get(key)
                if top is None:
                    top = unit_chains[key] = _after_unit_reductions(actions, gotos, *key)
                state = state_stack[-1] = top
                continue
            kind, size, origin, fmode, picks, include, trailing, expand1, name, fn, first_i, last_i = arg
            # -- reduce: the children, and the positions Lark would give the node
            if size:
                raw = value_stack[-size:]
                raw_pos = pos_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
                del pos_stack[-size:]
                if first_i >= 0:
                    first = raw_pos[first_i]
                else:
                    first = None
                    for first in raw_pos:
                        if first is not None:
                            break
                if first is None:
                    meta = None
                else:
                    if last_i >= 0:
                        last = raw_pos[last_i]
                    else:
                        for last in reversed(raw_pos):
                            if last is not None:
                                break
                    meta = (first[0], last[1])
                if fmode == _ALL:
                    children = raw
                elif fmode == _PICK:
                    children = [raw[i] for i in picks]
                else:
                    children = []
                    for i, expand, nones in include:
                        if nones:
                            children += [None] * nones
                        if expand:
                            if children:
                                children += raw[i]
                            else:   # left recursion: extend the list in place
                                children = raw[i]
                        else:
                            children.append(raw[i])
            else:
                meta = None
                children = []
            if trailing:
                children += [None] * trailing
            pos = meta
            value: Any
            if kind == _INLINE:
                value = children
            elif expand1 and len(children) == 1:
                # Lark returns the child itself; propagate_positions then gives a tree the
                # positions of this reduction as its container (tokens and None keep their own)
                value = children[0]
                if value is None:
                    pos = None
                elif isinstance(value, Token_):
                    pos = (value, value)
                elif meta is not None and _child_pos(raw, raw_pos, value) is None:
                    # Lark would also set the empty child's own positions; no rule does this
                    raise NotImplementedError(f"inlined empty child in {origin}")
            elif failure is not None:
                value = None
            elif fn is None:
                value = Tree(name, children, _lark_meta(meta))
            else:
                try:
                    value = fn(builder, _EMPTY_META if meta is None else meta, children)
                except Exception as err:  # noqa: BLE001 - Lark would have finished parsing first
                    failure = err
                    value = None
            state = gotos[state_stack[-1]][origin]
            state_stack.append(state)
            value_stack.append(value)
            pos_stack.append(pos)
    raise AssertionError("the LALR parser never accepted")  # pragma: no cover


def _child_pos(raw, raw_pos, value):
    for v, p in zip(raw, raw_pos):
        if v is value:
            return p
    return None


def _lark_meta(meta):
    """Lark's Meta for the (first, last) tokens of a reduction (or None: empty)."""
    lm = Meta()
    if meta is not None:
        first, last = meta
        lm.empty = False
        lm.line, lm.column, lm.start_pos = first.line, first.column, first.start_pos
        lm.end_line, lm.end_column, lm.end_pos = last.end_line, last.end_column, last.end_pos
    return lm


def parse(source: SourceFile, sink: DiagnosticSink) -> ast.Program | None:
    """Parses a whole file. On a syntax error it resumes at the next top-level
    declaration, so several independent mistakes are reported in one go."""
    text = source.text
    program = None
    resume_at = 0
    for _ in range(MAX_SYNTAX_ERRORS):
        masked = text if resume_at == 0 else _blank(text[:resume_at]) + text[resume_at:]
        try:
            result = _fast_parse(masked, _ToAst(source.name))
            if resume_at == 0:
                program = result
            break
        except UnexpectedInput as err:
            failed_at = _report(err, source, masked, sink)
        except NestingTooDeep as err:
            message, help_ = _NESTING_WORDS[err.what]
            sink.report(Code.E003, message, err.span, "too deeply nested", help=help_)
            failed_at = err.span.end
        nxt = _DECL_START.search(text, failed_at)
        if nxt is None:
            break
        resume_at = nxt.start()
    return program


def parse_body(source: SourceFile, sink: DiagnosticSink) -> ast.Block | None:
    """Parses a file that is one choreography body (a program a model wrote: no resuming
    after an error, the first one is reported)."""
    try:
        return _fast_parse(source.text, _ToAst(source.name), start="program_body")
    except UnexpectedInput as err:
        _report(err, source, source.text, sink)
    except NestingTooDeep as err:
        message, help_ = _NESTING_WORDS[err.what]
        sink.report(Code.E003, message, err.span, "too deeply nested", help=help_)
    return None


_NESTING_WORDS = {  # what -> (message, help)
    "expression": (f"expression nested more than {MAX_NESTING} levels deep", "split it into named bindings"),
    "type": (f"type nested more than {MAX_NESTING} levels deep", "use `json` for the deeper part"),
    "open": (f"more than {MAX_OPEN} brackets and constructs open at once",
             "close brackets sooner, or split the expression into named bindings"),
}


def _blank(prefix: str) -> str:
    """Spaces in place of text, newlines kept, so later offsets and lines stay true."""
    return re.sub(r"[^\n]", " ", prefix)
