"""Expression trees of the spec language: immutable, with the source span of every node.

The same nodes serve the parser's AST and the checked spec IR (after the checker has inlined
calls to user and prelude definitions), so a later stage can still point at the spec line a
node came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span

NO_SPAN = Span("<generated>", 0, 0)


@dataclass(frozen=True)
class Num:
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    """`fn(args; params)`: params are a loss's parameters after the semicolon."""

    fn: str
    args: tuple
    params: tuple = ()
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Neg:
    operand: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Binary:
    """`left op right` with op one of + - * / ^."""

    op: str
    left: object
    right: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Case:
    """One arm of a piecewise: `left cmp right: value`."""

    left: object
    cmp: str
    right: object
    value: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Piecewise:
    cases: tuple
    otherwise: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


Expr = Num | Name | Call | Neg | Binary | Piecewise

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}


def children(node) -> tuple:
    """The direct sub-expressions of a node, in source order."""
    if isinstance(node, Call):
        return node.args + node.params
    if isinstance(node, Neg):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Piecewise):
        out = []
        for c in node.cases:
            out += [c.left, c.right, c.value]
        return (*out, node.otherwise)
    return ()


def walk(node):
    """Every node of a tree, parents before children."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def size(node) -> int:
    """Number of nodes in the tree."""
    return sum(1 for _ in walk(node))


def depth(node) -> int:
    """Nodes on the longest root-to-leaf path, counted without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children(n))
    return deepest


def format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def unparse(node, parent: int = 0) -> str:
    """Canonical spec-language text of an expression (used for SPEC and for messages)."""
    if isinstance(node, Num):
        text = format_number(node.value)
        return f"({text})" if node.value < 0 else text
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Call):
        args = ", ".join(unparse(a) for a in node.args)
        if node.params:
            args += "; " + ", ".join(unparse(p) for p in node.params)
        return f"{node.fn}({args})"
    if isinstance(node, Piecewise):
        arms = [
            f"{unparse(c.left)} {c.cmp} {unparse(c.right)}: {unparse(c.value)}" for c in node.cases
        ]
        arms.append(f"otherwise: {unparse(node.otherwise)}")
        return "piecewise(" + ", ".join(arms) + ")"
    if isinstance(node, Neg):
        text = "-" + unparse(node.operand, PRECEDENCE["neg"])
        return f"({text})" if parent >= PRECEDENCE["neg"] else text
    if isinstance(node, Binary):
        prec = PRECEDENCE[node.op]
        if node.op == "^":  # right-associative
            text = f"{unparse(node.left, prec + 1)}^{unparse(node.right, prec)}"
        else:
            text = f"{unparse(node.left, prec)} {node.op} {unparse(node.right, prec + 1)}"
        return f"({text})" if parent > prec else text
    raise TypeError(f"not an expression node: {node!r}")
