"""Spec expressions to SymPy, by mirasc's own code (never `sympify` of text): the functions the
language knows, constant sub-expressions folded in Python floats with overflow checks (so a
hostile spec cannot make SymPy compute towers of exponents), every comparison and result checked
real, and exponents limited after folding and after SymPy combines powers."""

from __future__ import annotations

import contextlib
import math

import sympy as sp

from ..errors import Span, SpecLimitError, SpecTypeError
from ..frontend.names import MAX_EXPONENT
from ..ir import expr as E


class Sigmoid(sp.Function):
    """1 / (1 + exp(-x)), kept whole so its derivative prints as s * (1 - s) (no overflow)."""

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_evalf(self, prec):  # of a number (a derivative evaluated at a constant)
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)


class Softplus(sp.Function):
    """log(1 + exp(x)), kept whole so it prints as a stable library softplus."""

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)


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
            f"{what} is not a real number: {short(E.unparse(node))}",
            node.span,
            hint="e.g. sqrt or log of a negative value, or 0 to a negative power",
        )
    return e


def short(text: str) -> str:
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
        raise _sympy_type_error(e, lambda: what, span) from None


def _sympy_type_error(error: TypeError, what, span: Span) -> Exception:
    """A TypeError SymPy raised on the spec's formula (a non-real comparison, one it cannot
    decide, one with a nan it made) as a SpecTypeError about `what()`; other errors as is."""
    if str(error).startswith("did not evaluate to a bool"):  # fuzz-found, in nested piecewise
        return SpecTypeError(
            f"{what()} has a comparison SymPy cannot decide",
            span,
            hint="simplify the piecewise conditions (fewer nested piecewise and min/max)",
        )
    if str(error) == "Invalid NaN comparison":  # SymPy's assumptions on a nan it made (fuzz)
        return SpecTypeError(
            f"{what()} makes SymPy compare an undefined value (nan)",
            span,
            hint="keep logs' arguments and powers' bases away from 0 and poles",
        )
    if not str(error).startswith(_NON_REAL):
        return error
    value = str(error)[len(_NON_REAL) :].strip()
    return SpecTypeError(
        f"{what()} compares a value that is not real ({short(value)})",
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


def _exponent_of_one_plus_exp(e: sp.Expr) -> sp.Expr | None:
    """u when `e` is 1 + exp(u): a softplus or sigmoid written out, which the builder keeps
    whole (as if written by name) so that neither its value nor its derivatives overflow."""
    one, rest = e.as_coeff_Add()
    return rest.args[0] if one == 1 and isinstance(rest, sp.exp) else None


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
            raise _sympy_type_error(e, lambda: short(E.unparse(node)), node.span) from None
        except OverflowError:  # SymPy evaluating a huge constant while it simplifies (fuzz)
            raise SpecLimitError(
                f"{short(E.unparse(node))} makes SymPy evaluate a number too large to hold",
                node.span,
                hint="keep constants and exponents small",
            ) from None
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
            u = _exponent_of_one_plus_exp(b)
            if u is not None:  # a / (1 + exp(u)): exp(u) overflows fp32 past u = 88
                return Sigmoid(u) if a == sp.exp(u) else a * Sigmoid(-u)
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
        if node.fn == "log" and (u := _exponent_of_one_plus_exp(args[0])) is not None:
            return Softplus(u)  # log(1 + exp(u)), stably
        return _FUNCTIONS[node.fn](*args)
