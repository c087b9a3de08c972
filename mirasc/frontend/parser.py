"""Text to AST: Lark (LALR) parses, this module checks limits and turns Lark's tree into `ast` nodes.

Every failure becomes a `SpecSyntaxError` or `SpecLimitError` with file, line, column and caret;
Lark's own exceptions never escape.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Span, SpecLimitError, SpecSyntaxError
from ..ir.expr import Binary, Call, Case, Name, Neg, Num, Piecewise
from . import syntax

MAX_BYTES = 256 * 1024  # a spec is a few hundred bytes; this bounds parse time
MAX_DEPTH = (
    120  # nesting of the parse tree: deep enough for any real formula, far from recursion limits
)
MAX_LITERAL = 1e30  # numbers beyond this are typos or attacks, and overflow fp32 anyway

TOKEN_NAMES = {
    "LPAR": "'('",
    "RPAR": "')'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "EQUAL": "'='",
    "COLON": "':'",
    "SEMICOLON": "';'",
    "COMMA": "','",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "CIRCUMFLEX": "'^'",
    "NAME": "a name",
    "NUMBER": "a number",
    "COMPARATOR": "a comparison",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "MEMORY": "'memory'",
    "LOSS": "'loss'",
    "ACTIVATION": "'activation'",
    "GATE": "'gate'",
    "INIT": "'init'",
    "CONST": "'const'",
    "PIECEWISE": "'piecewise'",
    "OTHERWISE": "'otherwise'",
    "$END": "end of file",
}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = (
        resources.files("mirasc.frontend").joinpath("grammar.lark").read_text(encoding="utf-8")
    )
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def decode(data: bytes | str, file: str) -> str:
    """Spec bytes to text, or a located error for non-UTF-8 input and oversized files."""
    if isinstance(data, str):
        text = data
        _check_encodable(text, file)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            head = data[: e.start]
            line = head.count(b"\n") + 1
            col = e.start - (head.rfind(b"\n") + 1) + 1
            raise SpecSyntaxError(
                f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                Span(file, line, col),
                hint="a .miras spec is plain text",
            ) from None
    if len(text) > MAX_BYTES:  # located where the limit is crossed
        head = text[:MAX_BYTES]
        line, start = head.count("\n") + 1, head.rfind("\n") + 1
        end = text.find("\n", start)
        raise SpecLimitError(
            f"spec is {len(text)} characters long; the limit is {MAX_BYTES}",
            Span(file, line, MAX_BYTES - start + 1, text[start : end if end >= 0 else None]),
        )
    return text


def _check_encodable(text: str, file: str) -> None:
    """Text given as `str` is real Unicode (no lone surrogate), so that it has one UTF-8
    encoding: the one its bytes, its hash and its messages use."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        head = text[: e.start]
        line = head.count("\n") + 1
        col = e.start - (head.rfind("\n") + 1) + 1
        line_text = text.splitlines()[line - 1].encode("utf-8", "backslashreplace").decode()
        raise SpecSyntaxError(
            f"the text holds a lone surrogate U+{ord(text[e.start]):04X}, which is not Unicode",
            Span(file, line, col, line_text),
            hint="a .miras spec is plain UTF-8 text",
        ) from None


def _span(file: str, lines: list[str], line: int, column: int) -> Span:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return Span(file, line, column, text)


def _describe(expected) -> str:
    names = sorted({TOKEN_NAMES.get(t, t.lower()) for t in expected})
    if len(names) > 8:
        names = [*names[:8], "..."]
    return ", ".join(names)


def _syntax_error(e: UnexpectedInput, file: str, text: str, lines: list[str]) -> SpecSyntaxError:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}" if ch else "end of file"
        return SpecSyntaxError(
            f"unexpected character {shown}",
            _span(file, lines, e.line, e.column),
            hint=f"expected {_describe(e.allowed)}" if e.allowed else None,
        )
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        last = len(lines) or 1
        col = len(lines[-1]) + 1 if lines else 1
        return SpecSyntaxError(
            "unexpected end of file",
            _span(file, lines, last, col),
            hint=f"expected {_describe(e.expected)}",
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    what = TOKEN_NAMES.get(tok.type, tok.type.lower())
    return SpecSyntaxError(
        f"unexpected {what} {str(tok)!r}",
        _span(file, lines, tok.line, tok.column),
        hint=f"expected {_describe(e.expected)}",
    )


def _check_depth(tree: Tree, file: str, lines: list[str]) -> None:
    """Reject trees nested deeper than MAX_DEPTH, iteratively (no recursion on hostile input)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            meta = node.meta
            raise SpecLimitError(
                f"expression nested more than {MAX_DEPTH} levels deep",
                _span(file, lines, getattr(meta, "line", 1), getattr(meta, "column", 1)),
                hint="split the formula into smaller loss or activation definitions",
            )
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth + 1))


class _Builder:
    """Turns a depth-checked Lark tree into `ast` nodes, attaching spans."""

    def __init__(self, file: str, lines: list[str]):
        self.file = file
        self.lines = lines

    def span(self, node) -> Span:
        if isinstance(node, Token):
            return _span(self.file, self.lines, node.line, node.column)
        meta = node.meta
        if getattr(meta, "empty", True):
            return _span(self.file, self.lines, 1, 1)
        return _span(self.file, self.lines, meta.line, meta.column)

    def number(self, tok: Token, negative: bool = False) -> float:
        value = float(tok)
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise SpecLimitError(
                f"number {str(tok)[:40]} is out of range (|x| <= {MAX_LITERAL:g})", self.span(tok)
            )
        return -value if negative else value

    def module(self, tree: Tree, text: str) -> syntax.Module:
        memories, functions = [], []
        for item in tree.children:
            if item.data == "memory":
                memories.append(self.memory(item))
            else:
                functions.append(self.function(item))
        return syntax.Module(self.file, text, tuple(memories), tuple(functions))

    def function(self, node: Tree) -> syntax.FunctionDef:
        if node.data == "loss_def":
            name, params, body = node.children
            pos, extra = self.param_list(params)
            return syntax.FunctionDef(
                "loss", str(name), pos, extra, self.expr(body), self.span(name)
            )
        name, params, body = node.children
        pos, extra = self.param_list(params)
        return syntax.FunctionDef(
            "activation", str(name), pos, extra, self.expr(body), self.span(name)
        )

    def param_list(self, node: Tree) -> tuple[tuple, tuple]:
        pos, extra = node.children
        return (
            tuple(str(t) for t in pos.children),
            tuple(str(t) for t in extra.children) if extra is not None else (),
        )

    def memory(self, node: Tree) -> syntax.MemoryDecl:
        name, *members = node.children
        return syntax.MemoryDecl(str(name), tuple(self.member(m) for m in members), self.span(name))

    def member(self, node: Tree):
        kind = node.data
        if kind == "setting":
            name, value = node.children
            return syntax.Setting(str(name), self.value(value), self.span(name))
        if kind == "bias_formula":
            name, params, body = node.children
            if str(name) != "bias":
                raise SpecSyntaxError(
                    f"only `bias` can be defined by a formula inside a memory, not {str(name)!r}",
                    self.span(name),
                    hint="write `bias(y, v; params) = ...`, or a top-level `loss` definition",
                )
            pos, extra = self.param_list(params)
            return syntax.FunctionDef("loss", "bias", pos, extra, self.expr(body), self.span(name))
        if kind == "gate_decl":
            name, body, init = node.children
            start = None if init is None else self.signed(init)
            return syntax.GateDecl(str(name), self.expr(body), self.span(name), start)
        name, value = node.children  # const_decl
        return syntax.ConstDecl(str(name), self.signed(value), self.span(name))

    def signed(self, node: Tree) -> float:
        return self.number(node.children[0], negative=node.data == "negative_number")

    def value(self, node):
        kind = node.data
        if kind in ("signed_number", "negative_number"):
            return syntax.NumberValue(self.signed(node), self.span(node))
        if kind in ("true", "false"):
            return syntax.BoolValue(kind == "true", self.span(node))
        if kind == "ref":
            return syntax.RefValue(str(node.children[0]), self.span(node))
        name, *arguments = node.children  # configured
        args, kwargs = [], []
        for a in arguments:
            if a is None:
                continue
            if isinstance(a, Tree) and a.data == "keyword":
                key, val = a.children
                kwargs.append(syntax.Keyword(str(key), self.value(val), self.span(key)))
            else:
                args.append(self.value(a))
        return syntax.Configured(str(name), tuple(args), tuple(kwargs), self.span(name))

    def expr(self, node):
        kind = node.data
        sp = self.span(node)
        if kind == "number":
            return Num(self.number(node.children[0]), sp)
        if kind == "name":
            return Name(str(node.children[0]), sp)
        if kind == "neg":
            return Neg(self.expr(node.children[0]), sp)
        if kind in ("add", "sub", "mul", "div", "pow"):
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "^"}[kind]
            left, right = node.children
            return Binary(op, self.expr(left), self.expr(right), sp)
        if kind == "call":
            name, args, params = node.children
            return Call(
                str(name),
                tuple(self.expr(a) for a in args.children) if args is not None else (),
                tuple(self.expr(p) for p in params.children) if params is not None else (),
                self.span(name),
            )
        if kind == "piecewise":
            *cases, otherwise = node.children
            arms = []
            for c in cases:
                left, cmp, right, value = c.children
                arms.append(
                    Case(
                        self.expr(left), str(cmp), self.expr(right), self.expr(value), self.span(c)
                    )
                )
            return Piecewise(tuple(arms), self.expr(otherwise), sp)
        raise AssertionError(f"unhandled grammar rule {kind}")


def parse(data: bytes | str, file: str = "<spec>") -> syntax.Module:
    """Parse spec text (or bytes) into an AST; raises MirascError subclasses only."""
    text = decode(data, file)
    lines = text.splitlines() or [""]
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, file, text, lines) from None
    _check_depth(tree, file, lines)
    return _Builder(file, lines).module(tree, text)
