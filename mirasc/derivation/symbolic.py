"""Spec to Derived: SymPy builds each loss as g(S_1..S_m) with S_i = sum_j phi_i(y_j, v_j) and
each activation, differentiates them, and keeps every piece a kernel needs: the first-order
update (dl/dy), and the second-order pieces a backward pass through an inner step needs.

Spec expressions are built into SymPy objects by this module's own code (never `sympify` of
text). Constant sub-expressions are folded in Python floats first, with overflow checks, so a
hostile spec cannot make SymPy compute towers of exponents.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import sympy as sp

from ..errors import Span, SpecLimitError, SpecTypeError
from ..frontend.names import MAX_EXPONENT
from ..ir import expr as E
from ..ir.spec import Spec, bias_gate_names
from .budget import Budget

# tree nodes of any one derived expression (a derivative prints as its tree, less what CSE
# shares): the shipped specs need at most 38; a 24-deep composition of four functions ~15000.
# At 10000 the derivation and printing stay around a second, far inside the time budget even
# on a loaded machine
MAX_DERIVED_NODES = 10000


class Sigmoid(sp.Function):
    """1 / (1 + exp(-x)), kept whole so its derivative prints as s * (1 - s) (no overflow)."""

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)


class Softplus(sp.Function):
    """log(1 + exp(x)), kept whole so it prints as a stable library softplus."""

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])


_FUNCTIONS = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "sign": sp.sign,
    "sigmoid": Sigmoid,
    "tanh": sp.tanh,
    "cosh": sp.cosh,
    "sinh": sp.sinh,
    "erf": sp.erf,
    "softplus": Softplus,
}

_FLOAT_FUNCTIONS = {  # for folding constants in Python floats
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "abs": abs,
    "sign": lambda x: float((x > 0) - (x < 0)),
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0,
    "tanh": math.tanh,
    "cosh": math.cosh,
    "sinh": math.sinh,
    "erf": math.erf,
    "softplus": lambda x: math.log1p(math.exp(x)) if x < 30 else x,
    "min": min,
    "max": max,
}

_RELATIONS = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}

Y, V, X, Z = sp.symbols("y v x z", real=True)


def symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def _number(x: float) -> sp.Expr:
    if float(x).is_integer() and abs(x) < 2**53:
        return sp.Integer(int(x))
    if float(x * 2).is_integer():
        return sp.Rational(int(x * 2), 2)
    return sp.Float(x)


def _fold(node, fn, values, span):
    """A constant operation in Python floats, or a located error if it is not finite."""
    try:
        result = float(fn(*values))
    except (OverflowError, ValueError, ZeroDivisionError) as e:
        raise SpecLimitError(f"constant expression cannot be evaluated ({e})", span) from None
    if not math.isfinite(result) or isinstance(result, complex):
        raise SpecLimitError("constant expression is not a finite real number", span)
    return _number(result)


def _not_real(e: sp.Expr) -> bool:
    """True when SymPy can tell `e` is not a finite real number (complex, infinite, NaN)."""
    if e.has(sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity, sp.I):
        return True
    return e.is_extended_real is False


def require_real(e: sp.Expr, node, what: str) -> sp.Expr:
    """`e` unless it is certainly not real: comparisons, piecewise conditions and every
    kernel's arithmetic are defined on real numbers only."""
    if _not_real(e):
        raise SpecTypeError(
            f"{what} is not a real number: {_short(E.unparse(node))}",
            node.span,
            hint="e.g. sqrt or log of a negative value, or 0 to a negative power",
        )
    return e


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _relation(cmp: str, a: sp.Expr, b: sp.Expr, case) -> sp.Basic:
    """`a cmp b`, built only between real values."""
    require_real(a, case.left, "the left side of a comparison")
    require_real(b, case.right, "the right side of a comparison")
    return _RELATIONS[cmp](a, b)


_NON_REAL = "Invalid comparison of non-real"


@contextlib.contextmanager
def real_comparisons(what: str, span: Span):
    """SymPy's refusal to compare a non-real value, as a located error about `what`. Checking
    each side first (`require_real`) catches what is visibly complex; SymPy can still meet a
    non-real value later, when it folds a function into piecewise arms (log of an arm that is
    0) or differentiates one."""
    try:
        yield
    except TypeError as e:
        raise _non_real_error(e, lambda: what, span) from None


def _non_real_error(error: TypeError, what, span: Span) -> Exception:
    """SymPy's non-real comparison as a SpecTypeError about `what()`; other errors as is."""
    if not str(error).startswith(_NON_REAL):
        return error
    value = str(error)[len(_NON_REAL) :].strip()
    return SpecTypeError(
        f"{what()} compares a value that is not real ({_short(value)})",
        span,
        hint="e.g. a log, sqrt or power of a piecewise arm that is zero or negative",
    )


def _check_powers(out: sp.Expr, node) -> None:
    """Powers SymPy combined at this node ((y^8)^16, y^40 * y^40) obey the exponent limit:
    a kernel unrolls an integer power into multiplications."""
    for p in (out, *out.args) if out.is_Mul else (out,):
        if p.is_Pow and p.exp.is_Number and abs(float(p.exp)) > MAX_EXPONENT:
            raise SpecLimitError(
                f"exponent {p.exp} is too large (|p| <= {MAX_EXPONENT:g} once constants are "
                "folded and powers combined)",
                node.span,
            )


def _pow(a, b):
    r = a**b
    if isinstance(r, complex):
        raise ValueError("negative base with a fractional exponent")
    return r


_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "^": _pow,
}


class Builder:
    """Expression tree to SymPy; with `sums` set, each sum(...) becomes a symbol S_i."""

    def __init__(self, env: dict, sums: list | None = None):
        self.env = env
        self.sums = sums
        self.origin: dict[sp.Basic, object] = {}  # sympy node -> spec node, for messages

    def build(self, node) -> sp.Expr:
        try:
            out = self._build(node)
        except TypeError as e:  # the message is made only when needed: unparse is O(tree)
            raise _non_real_error(e, lambda: _short(E.unparse(node)), node.span) from None
        self.origin.setdefault(out, node)
        return out

    def _build(self, node) -> sp.Expr:
        if isinstance(node, E.Num):
            return _number(node.value)
        if isinstance(node, E.Name):
            return self.env[node.id]
        if isinstance(node, E.Neg):
            return -self.build(node.operand)
        if isinstance(node, E.Binary):
            a, b = self.build(node.left), self.build(node.right)
            if a.is_Number and b.is_Number:
                return _fold(node, _BINARY[node.op], (float(a), float(b)), node.span)
            out = self._binary(node, a, b)
            _check_powers(out, node)
            return out
        if isinstance(node, E.Piecewise):
            arms = []
            for c in node.cases:
                cond = _relation(c.cmp, self.build(c.left), self.build(c.right), c)
                arms.append((self.build(c.value), cond))
            arms.append((self.build(node.otherwise), True))
            return sp.Piecewise(*arms)
        assert isinstance(node, E.Call)
        return self._call(node)

    def _binary(self, node: E.Binary, a: sp.Expr, b: sp.Expr) -> sp.Expr:
        if node.op == "+":
            return a + b
        if node.op == "-":
            return a - b
        if node.op == "*":
            return a * b
        if node.op == "/":
            if b == 0:
                raise SpecTypeError("division by zero", node.right.span)
            return a / b
        if b.is_Number and abs(float(b)) > MAX_EXPONENT:
            raise SpecLimitError(
                f"exponent {E.format_number(float(b))} is too large (|p| <= {MAX_EXPONENT:g} "
                "once constants are folded)",
                node.right.span,
            )
        return sp.Pow(a, b)

    def _call(self, node: E.Call) -> sp.Expr:
        if node.fn == "sum":
            phi = self.build(node.args[0])
            for i, (existing, _) in enumerate(self.sums):
                if existing == phi:
                    return symbol(f"_S{i}")
            self.sums.append((phi, node))
            return symbol(f"_S{len(self.sums) - 1}")
        args = [self.build(a) for a in node.args]
        if all(a.is_Number for a in args):
            return _fold(node, _FLOAT_FUNCTIONS[node.fn], [float(a) for a in args], node.span)
        if node.fn in ("min", "max"):
            a, b = (
                require_real(x, n, f"an argument of {node.fn}")
                for x, n in zip(args, node.args, strict=True)
            )
            return sp.Piecewise((a, a <= b if node.fn == "min" else a >= b), (b, True))
        return _FUNCTIONS[node.fn](*args)


def _clean(e: sp.Expr) -> sp.Expr:
    """Drop distributional terms (the derivative of sign is zero almost everywhere)."""
    e = e.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    return e.replace(sp.Heaviside, lambda x, *a: sp.Piecewise((1, x > 0), (0, True)))


def d(e: sp.Expr, *wrt) -> sp.Expr:
    return _clean(sp.diff(e, *wrt))


@dataclass(frozen=True)
class BiasPieces:
    """l(y, v) = g(S_0..S_{m-1}), S_i = sum_j phi_i(y_j, v_j); params are gate symbols."""

    g: sp.Expr
    phi: tuple  # phi_i(y, v)
    params: tuple  # gate symbols the loss mentions
    dphi: tuple  # d phi_i / dy
    dg: tuple  # d g / d S_i
    # second order, for a backward pass through an inner step:
    # d(dl/dy_j)/dy_k = delta_jk sum_i dg_i d2phi_i(j) + sum_il d2g_il dphi_i(j) dphi_l(k)
    d2phi: tuple  # d^2 phi_i / dy^2
    dphi_dv: tuple  # d^2 phi_i / dy dv
    d2g: tuple  # d^2 g / dS_i dS_l, row-major m x m
    dphi_dparam: tuple  # [i][p]: d^2 phi_i / dy dparam_p
    dg_dparam: tuple  # [i][p]: d^2 g / dS_i dparam_p

    @property
    def sums(self) -> tuple:
        return tuple(symbol(f"_S{i}") for i in range(len(self.phi)))

    def grad(self) -> sp.Expr:
        """dl/dy_j, element-wise given the sums."""
        return sum((gi * di for gi, di in zip(self.dg, self.dphi, strict=True)), sp.Integer(0))


@dataclass(frozen=True)
class ActivationPieces:
    name: str
    f: sp.Expr
    df: sp.Expr
    d2f: sp.Expr


@dataclass(frozen=True)
class Derived:
    spec: Spec
    bias: BiasPieces
    activation: ActivationPieces | None
    gates: tuple  # (name, sympy expression in z)


def limit_size(e: sp.Expr, what: str, span: Span) -> sp.Expr:
    """`e` unless its tree grows past MAX_DERIVED_NODES (counted with an early stop): the
    work measure of a derivative, taken before the next stage multiplies it."""
    for count, _ in enumerate(sp.preorder_traversal(e), start=1):
        if count > MAX_DERIVED_NODES:
            raise SpecLimitError(
                f"{what} grows past {MAX_DERIVED_NODES} terms",
                span,
                hint="simplify the formula: fewer nested functions, piecewise arms or powers",
            )
    return e


def derive_bias(spec: Spec, budget: Budget | None = None) -> BiasPieces:
    """The loss as g(S) with its sums phi_i, and every first and second derivative."""
    budget = budget or Budget()
    span = spec.bias.body.span
    params = tuple(symbol(n) for n in bias_gate_names(spec.bias))
    env = {"y": Y, "v": V, **{p.name: p for p in params}}
    sums: list = []
    with budget.stage("the bias", span):
        g = require_real(Builder(env, sums).build(spec.bias.body), spec.bias.body, "the bias")
        for phi_i, node in sums:
            require_real(phi_i, node, "a sum's term")
    phi = tuple(p for p, _ in sums)
    S = tuple(symbol(f"_S{i}") for i in range(len(phi)))
    with (
        budget.stage("the gradient of the bias", span),
        real_comparisons("the gradient of the bias", span),
    ):
        dphi = tuple(limit_size(d(p, Y), "the gradient of the bias", span) for p in phi)
        dg = tuple(limit_size(d(g, s), "the gradient of the bias", span) for s in S)
        grad = sum((gi * di for gi, di in zip(dg, dphi, strict=True)), sp.Integer(0))
        if grad == 0 or sp.expand(grad) == 0:  # judged whole: sum(y^2) + sum(-y^2) is zero
            raise SpecTypeError("the bias has zero gradient in y", span)
    with (
        budget.stage("the second derivatives of the bias", span),
        real_comparisons("the second derivatives of the bias", span),
    ):
        second = dict(
            d2phi=tuple(d(p, Y) for p in dphi),
            dphi_dv=tuple(d(p, V) for p in dphi),
            d2g=tuple(d(gi, s) for gi in dg for s in S),
            dphi_dparam=tuple(tuple(d(p, a) for a in params) for p in dphi),
            dg_dparam=tuple(tuple(d(gi, a) for a in params) for gi in dg),
        )
        for e in sp.flatten(second.values()):
            limit_size(e, "the second derivatives of the bias", span)
    return BiasPieces(g=g, phi=phi, params=params, dphi=dphi, dg=dg, **second)


def derive_activation(spec: Spec, budget: Budget | None = None) -> ActivationPieces | None:
    """The activation and its first two derivatives; an activation must depend on x."""
    act = spec.architecture.activation
    if act is None:
        return None
    budget = budget or Budget()
    what, span = f"activation {act.name!r}", act.body.span
    with budget.stage(what, span):
        f = require_real(Builder({"x": X}).build(act.body), act.body, what)
        if X not in f.free_symbols:
            raise SpecTypeError(
                f"{what} does not depend on its input (it is {_short(sp.sstr(f))})",
                span,
                hint="an MLP memory needs an activation of x, e.g. silu or gelu",
            )
    with budget.stage(f"the derivative of {what}", span), real_comparisons(what, span):
        df = limit_size(d(f, X), f"the derivative of {what}", span)
    if df == 0:  # piecewise constant, sign(x): no gradient reaches the layers before it
        raise SpecTypeError(
            f"{what} has zero derivative everywhere (it is {_short(sp.sstr(f))})",
            span,
            hint="an MLP memory learns through its activation's derivative: use e.g. silu",
        )
    with budget.stage(f"the second derivative of {what}", span), real_comparisons(what, span):
        d2f = limit_size(d(df, X), f"the second derivative of {what}", span)
    return ActivationPieces(act.name, f, df, d2f)


def derive_gates(spec: Spec, budget: Budget | None = None) -> tuple:
    """(name, SymPy expression in z) per gate; a gate must depend on z as a whole."""
    budget = budget or Budget()
    gates = []
    for g in spec.gates:
        what = f"gate {g.name!r}"
        with budget.stage(what, g.body.span):
            e = require_real(Builder({"z": Z}).build(g.body), g.body, what)
        if Z not in e.free_symbols:
            raise SpecTypeError(
                f"{what} does not depend on its pre-activation z (it is {_short(sp.sstr(e))})",
                g.body.span,
                hint=f"a fixed value is a const: `const {g.name} = ...`",
            )
        gates.append((g.name, e))
    return tuple(gates)


def derive(spec: Spec, budget: Budget | None = None) -> Derived:
    """Every symbolic piece of a spec, differentiated and cleaned, within `budget`."""
    budget = budget or Budget()
    gates = derive_gates(spec, budget)
    return Derived(spec, derive_bias(spec, budget), derive_activation(spec, budget), gates)
