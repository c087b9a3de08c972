"""The parsed form of a .miras file, before names are resolved: what the text says, with spans."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span
from ..ir.expr import NO_SPAN


@dataclass(frozen=True)
class NumberValue:
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class BoolValue:
    value: bool
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class RefValue:
    """A bare name used as a setting's value: `bias = l2`, `lr: eta`."""

    name: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Keyword:
    name: str
    value: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Configured:
    """A configured choice: `mlp(depth: 2, activation: silu)`, `decay(alpha)`."""

    name: str
    args: tuple
    kwargs: tuple  # of Keyword
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


Value = NumberValue | BoolValue | RefValue | Configured


@dataclass(frozen=True)
class Setting:
    name: str
    value: Value
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class FunctionDef:
    """`loss name(y, v; p...) = body`, `activation name(x) = body`, or a memory's `bias(...) = body`."""

    kind: str  # "loss" | "activation"
    name: str
    params: tuple  # positional parameter names
    extra: tuple  # names after ';'
    body: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class GateDecl:
    """`gate name = formula of z`, optionally `, init value`: the value the gate starts at."""

    name: str
    body: object
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    init: float | None = None


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class MemoryDecl:
    name: str
    members: tuple  # Setting | FunctionDef (bias) | GateDecl | ConstDecl
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Module:
    file: str
    text: str
    memories: tuple
    functions: tuple
