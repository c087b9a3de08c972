"""Derived to Triton code: the bodies of the small `@triton.jit` helpers the Triton template
calls: the loss gradient dl/dy, its vector-Jacobian product (the second-order pieces a backward
pass through an inner gradient step needs) and the activation with two derivatives.

The loss pieces come in two shapes: one token's vector [Dv] (the recurrent kernels; a sum over
the vector is a scalar) and a chunk's tile [C, Dv] (the chunked kernels; a sum is per row,
[C, 1]). Only the reduction differs.

Gate parameters of the loss are renamed `_p0, _p1, ...` before printing, so no name from a spec
reaches kernel scope. Terms that are identically zero are dropped here, not left to the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..derivation.plan import Plan
from ..derivation.symbolic import Derived, symbol
from .loss_pieces import vjp_scalars, vjp_vectors
from .printing import TritonPrinter


def _sum(terms: list[str]) -> str:
    return " + ".join(terms) if terms else "0.0"


TOKEN_SUM = "axis=0"  # a token's vector [Dv] -> a scalar
ROW_SUM = "axis=1, keep_dims=True"  # a chunk's tile [C, Dv] -> a column [C, 1]


class _Body:
    """Lines of one helper: CSE'd element-wise vectors (masked), then per-token scalars;
    `reduce` is the tl.sum arguments that sum one token's values."""

    def __init__(self, printer: TritonPrinter, rename: dict, reduce: str):
        self.printer, self.rename, self.reduce = printer, rename, reduce
        self.lines: list[str] = []

    def total(self, x: str) -> str:
        """One token's sum of the element-wise expression x."""
        return f"tl.sum({x}, {self.reduce})"

    def vectors(self, exprs: dict, prefix: str) -> None:
        exprs = {n: e.subs(self.rename) for n, e in exprs.items()}
        self.lines += self.printer.block(exprs, prefix)
        self.lines += [f"{n} = tl.where(mask, {n}, 0.0)" for n in exprs]

    def scalars(self, exprs: dict, prefix: str) -> None:
        exprs = {n: e.subs(self.rename) for n, e in exprs.items()}
        if exprs:
            self.lines += self.printer.block(exprs, prefix)


@dataclass(frozen=True)
class LossBodies:
    grad_lines: list  # body of _bias_grad(y, v, mask, _p..) -> dl/dy
    vjp_lines: list  # body of _bias_vjp(y, v, mask, dyb, _p..) -> (yb, vb, pb..)
    n_params: int
    helpers: set


@dataclass(frozen=True)
class ActivationBodies:
    act_lines: list = field(default_factory=list)
    d1_lines: list = field(default_factory=list)
    d2_lines: list = field(default_factory=list)
    helpers: set = field(default_factory=set)


def bias_bodies(derived: Derived, plan: Plan, reduce: str = TOKEN_SUM) -> LossBodies:
    """`bias_grad(y, v, mask, _p..)` -> dl/dy and `bias_vjp(y, v, mask, dyb, _p..)` -> the
    adjoints of y, v and each parameter given the adjoint `dyb` of dl/dy; `reduce`: TOKEN_SUM
    for one token's vectors, ROW_SUM for a chunk's tiles (gates then are columns [C, 1])."""
    b = derived.bias
    printer = TritonPrinter()
    rename = {p: symbol(f"_p{i}") for i, p in enumerate(b.params)}
    grad = _grad_body(_Body(printer, rename, reduce), derived, plan)
    vjp = _vjp_body(_Body(printer, rename, reduce), derived, plan)
    return LossBodies(grad.lines, vjp.lines, len(b.params), printer.helpers)


def _nonzero(e) -> bool:
    return e != 0


def _grad_body(grad: _Body, derived: Derived, plan: Plan) -> _Body:
    """dl/dy_j = sum_i g_i(S) phi_i'(y_j, v_j), with S_i = sum_j phi_i(y_j, v_j)."""
    b, used = derived.bias, plan.sums
    m = len(b.phi)
    vec = {f"_phi{i}": b.values[i] for i in used}
    vec.update({f"_dphi{i}": b.dphi[i] for i in range(m) if _nonzero(b.dphi[i])})
    grad.vectors(vec, "_e")
    grad.lines += [f"_S{i} = {grad.total(f'_phi{i}')}" for i in used]
    grad.scalars({f"_g{i}": b.dg[i] for i in range(m)}, "_s")
    terms = [f"_g{i} * _dphi{i}" for i in range(m) if _nonzero(b.dphi[i])]
    grad.lines.append("return " + _sum(terms) + " + y * 0.0")
    return grad


def _vjp_body(vjp: _Body, derived: Derived, plan: Plan) -> _Body:
    """The vector-Jacobian product of dl/dy_j = sum_i g_i(S, p) phi_i'(y_j, v_j):
    P_i = sum_j dyb_j phi_i'(j), Q_l = sum_i d2g_il P_i, then
    yb_j = dyb_j sum_i g_i phi_i''(j) + sum_l Q_l phi_l'(j), the same for v with d/dv, and
    pb = sum_i P_i dg_i/dp + sum_j dyb_j sum_i g_i dphi_i'/dp + sum_l Q_l sum_j dphi_l/dp."""
    m = len(derived.bias.phi)
    vec, scal = vjp_vectors(derived.bias, plan.sums), vjp_scalars(derived.bias, plan.sums)
    vjp.vectors(vec, "_e")
    vjp.lines += [f"_S{i} = {vjp.total(f'_phi{i}')}" for i in plan.sums]
    vjp.scalars(scal, "_s")
    P = [i for i in range(m) if f"_dphi{i}" in vec]
    vjp.lines += [f"_P{i} = {vjp.total(f'dyb * _dphi{i}')}" for i in P]
    Q = []
    for j in plan.sums:
        terms = [f"_h{i}_{j} * _P{i}" for i in P if f"_h{i}_{j}" in scal]
        if terms:
            Q.append(j)
            vjp.lines.append(f"_Q{j} = {_sum(terms)}")
    yb = [f"dyb * ({_sum([f'_g{i} * _d2phi{i}' for i in range(m) if f'_d2phi{i}' in vec])})"]
    yb += [f"_Q{j} * _dphi{j}" for j in Q if f"_dphi{j}" in vec]
    vb = [f"dyb * ({_sum([f'_g{i} * _dphiv{i}' for i in range(m) if f'_dphiv{i}' in vec])})"]
    vb += [f"_Q{j} * _phiv{j}" for j in Q if f"_phiv{j}" in vec]
    vjp.lines.append(f"yb = tl.where(mask, {_sum(yb)}, 0.0)")
    vjp.lines.append(f"vb = tl.where(mask, {_sum(vb)}, 0.0)")
    outs = ["yb", "vb"]
    for j in range(len(derived.bias.params)):
        terms = [f"_P{i} * _gp{i}_{j}" for i in P if f"_gp{i}_{j}" in scal]
        inner = [f"_g{i} * _dphip{i}_{j}" for i in range(m) if f"_dphip{i}_{j}" in vec]
        if inner:
            terms.append(vjp.total(f"dyb * ({_sum(inner)})"))
        terms += [f"_Q{i} * {vjp.total(f'_phip{i}_{j}')}" for i in Q if f"_phip{i}_{j}" in vec]
        vjp.lines.append(f"pb{j} = {_sum(terms)} + 0.0 * _S_zero")
        outs.append(f"pb{j}")
    vjp.lines.insert(0, f"_S_zero = {vjp.total('y * 0.0')}")  # a token's zero, for typing
    vjp.lines.append("return " + ", ".join(outs))
    return vjp


def activation_bodies(derived: Derived) -> ActivationBodies:
    """`act(x)`, `act_d1(x)`, `act_d2(x)` bodies, or none for a linear memory."""
    a = derived.activation
    if a is None:
        return ActivationBodies()
    printer = TritonPrinter()
    bodies = [[*printer.block({"_r": e}, "_a"), "return _r + x * 0.0"] for e in (a.f, a.df, a.d2f)]
    return ActivationBodies(*bodies, helpers=printer.helpers)
