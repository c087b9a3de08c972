"""Spec to Derived: SymPy builds each loss as g(S_1..S_m) with S_i = sum_j phi_i(y_j, v_j) and
each activation, differentiates them, and keeps every piece a kernel needs: the first-order
update (dl/dy), and the second-order pieces a backward pass through an inner step needs.

Spec expressions become SymPy objects in `build` (never `sympify` of text).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..errors import Span, SpecLimitError, SpecTypeError
from ..ir.spec import Spec, bias_gate_names
from .budget import Budget
from .build import (  # noqa: F401  (Sigmoid, Softplus and the symbols are this stage's API)
    Builder,
    Sigmoid,
    Softplus,
    V,
    X,
    Y,
    Z,
    real_comparisons,
    require_real,
    short,
    symbol,
)

# tree nodes of any one derived expression (a derivative prints as its tree, less what CSE
# shares): the shipped specs need at most 38; a 24-deep composition of four functions ~15000.
# At 10000 the derivation and printing stay around a second, far inside the time budget even
# on a loaded machine
MAX_DERIVED_NODES = 10000


def _clean(e: sp.Expr) -> sp.Expr:
    """Drop distributional terms (the derivative of sign is zero almost everywhere)."""
    e = e.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    return e.replace(sp.Heaviside, lambda x, *a: sp.Piecewise((1, x > 0), (0, True)))


def _hyperbolic_ratios(product: sp.Mul) -> sp.Expr:
    """`product` with each sinh(u)^p cosh(u)^-q (p, q > 0) written tanh(u)^min(p, q) times what
    is left: the ratio is inf / inf in fp32 once |u| > 89 (log(cosh(r))'s gradient, a robust
    loss's, at a large residual), tanh is finite everywhere."""
    powers: dict = {}
    for factor in product.args:
        base, exponent = factor.as_base_exp()
        if isinstance(base, (sp.sinh, sp.cosh)) and exponent.is_Integer:
            powers[base] = powers.get(base, 0) + int(exponent)
    rewritten = {}
    for base, p in powers.items():
        cosh = sp.cosh(base.args[0])
        q = -powers.get(cosh, 0)
        if isinstance(base, sp.sinh) and p > 0 and q > 0:
            m = min(p, q)
            rewritten[base] = sp.tanh(base.args[0]) ** m * base ** (p - m) * cosh ** (m - q)
            rewritten[cosh] = sp.Integer(1)
    if not rewritten:
        return product
    kept = [f for f in product.args if f.as_base_exp()[0] not in rewritten]
    return sp.Mul(*kept, *rewritten.values())


def _stable_values(e: sp.Expr) -> sp.Expr:
    """`e` with log(cosh(u)) as |u| + log(1 + exp(-2|u|)) - log 2: cosh overflows fp32 once
    |u| > 89, the second form's exp never exceeds 1."""

    def log_cosh(x: sp.Expr) -> bool:
        return isinstance(x, sp.log) and isinstance(x.args[0], sp.cosh)

    def stable(x: sp.log) -> sp.Expr:
        u = sp.Abs(x.args[0].args[0])
        return u + sp.log(1 + sp.exp(-2 * u)) - sp.log(2)

    return e.replace(log_cosh, stable)


def _sech_squared(total: sp.Add) -> sp.Expr:
    """`total` with c - c tanh(u)^2 written c / cosh(u)^2: in fp32 the difference keeps an
    absolute error of ~1e-7 (all of the value once |u| > 8, tanh's derivative at a large
    argument), the quotient a relative one."""
    c, rest = total.as_coeff_Add()
    for term in sp.Add.make_args(rest) if c else ():
        coeff, power = term.as_coeff_Mul()
        base, exponent = power.as_base_exp()
        if coeff == -c and isinstance(base, sp.tanh) and exponent == 2:
            return rest - term + c / sp.cosh(base.args[0]) ** 2
    return total


def d(e: sp.Expr, *wrt) -> sp.Expr:
    """The derivative of `e`, cleaned, with hyperbolic functions in forms fp32 evaluates well."""
    e = _clean(sp.diff(e, *wrt)).replace(lambda x: x.is_Mul, _hyperbolic_ratios)
    return e.replace(lambda x: x.is_Add, _sech_squared)


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

    @property
    def values(self) -> tuple:
        """phi_i as kernels evaluate them for the sums S_i (same values, fp32-safe forms)."""
        return tuple(_stable_values(p) for p in self.phi)

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


_UNDEFINED = (sp.nan, sp.zoo, sp.oo, -sp.oo)


def limit_size(e: sp.Expr, what: str, span: Span) -> sp.Expr:
    """`e` unless its tree grows past MAX_DERIVED_NODES (counted with an early stop): the
    work measure of a derivative, taken before the next stage multiplies it. A derivative
    SymPy could only write with nan or an infinity (0^y's in y: log(0)) is refused too."""
    for count, node in enumerate(sp.preorder_traversal(e), start=1):
        if count > MAX_DERIVED_NODES:
            raise SpecLimitError(
                f"{what} grows past {MAX_DERIVED_NODES} terms",
                span,
                hint="simplify the formula: fewer nested functions, piecewise arms or powers",
            )
        if node in _UNDEFINED:
            raise SpecTypeError(
                f"{what} is undefined where the formula's arguments reach a pole ({node})",
                span,
                hint="keep powers' bases and logs' arguments away from 0, e.g. with + 1e-6",
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
                f"{what} does not depend on its input (it is {short(sp.sstr(f))})",
                span,
                hint="an MLP memory needs an activation of x, e.g. silu or gelu",
            )
    with budget.stage(f"the derivative of {what}", span), real_comparisons(what, span):
        df = limit_size(d(f, X), f"the derivative of {what}", span)
    if df == 0:  # piecewise constant, sign(x): no gradient reaches the layers before it
        raise SpecTypeError(
            f"{what} has zero derivative everywhere (it is {short(sp.sstr(f))})",
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
                f"{what} does not depend on its pre-activation z (it is {short(sp.sstr(e))})",
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
