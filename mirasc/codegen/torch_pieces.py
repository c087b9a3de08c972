"""Derived to PyTorch code: the second-order element-wise pieces that the chunked dual form's
explicit backward pass (`mirasc.runtime.chunked`) calls: the vector-Jacobian product of the
loss gradient dl/dy and the activation's second derivative. The same maths as
`triton_pieces.py` prints for the Triton kernels, printed for torch tensors [..., Dv] with
per-token gates [..., 1].
"""

from __future__ import annotations

import re

from ..derivation.plan import Plan
from ..derivation.symbolic import Derived, V, X, Y
from .loss_pieces import vjp_scalars, vjp_vectors
from .printing import TorchPrinter


def _sum(terms: list[str]) -> str:
    return " + ".join(terms) if terms else "0.0"


def _vectors(printer: TorchPrinter, exprs: dict, like: str, tensors: set, summed) -> list[str]:
    """CSE'd lines; a vector in `summed` that is free of every tensor symbol is broadcast to
    `like`'s shape, so that summing it counts each of its Dv entries."""
    lines = printer.block(exprs, "_e")
    for name, e in exprs.items():
        if name in summed and not (e.free_symbols & tensors):
            lines.append(
                f"{name} = torch.broadcast_to(torch.as_tensor({name}, dtype={like}.dtype), "
                f"{like}.shape)"
            )
    return lines


def _vjp_tail(b, used, vec: dict, scal: dict) -> list[str]:
    """The lines after the element-wise pieces: P_i, Q_l, then yb, vb and each pb."""
    m = len(b.phi)
    P = [i for i in range(m) if f"_dphi{i}" in vec]
    needed = {i for i in P for n in scal if n.startswith((f"_h{i}_", f"_gp{i}_"))}
    lines = [f"_P{i} = (dyb * _dphi{i}).sum(-1, keepdim=True)" for i in P if i in needed]
    Q = []
    for j in used:
        terms = [f"_h{i}_{j} * _P{i}" for i in P if f"_h{i}_{j}" in scal]
        if terms:
            Q.append(j)
            lines.append(f"_Q{j} = {_sum(terms)}")
    yb = [f"dyb * ({_sum([f'_g{i} * _d2phi{i}' for i in range(m) if f'_d2phi{i}' in vec])})"]
    yb += [f"_Q{j} * _dphi{j}" for j in Q if f"_dphi{j}" in vec]
    vb = [f"dyb * ({_sum([f'_g{i} * _dphiv{i}' for i in range(m) if f'_dphiv{i}' in vec])})"]
    vb += [f"_Q{j} * _phiv{j}" for j in Q if f"_phiv{j}" in vec]
    lines += [f"yb = {_sum(yb)}", f"vb = {_sum(vb)}"]
    outs = ["yb", "vb"]
    for j in range(len(b.params)):
        terms = [f"_P{i} * _gp{i}_{j}" for i in P if f"_gp{i}_{j}" in scal]
        inner = [f"_g{i} * _dphip{i}_{j}" for i in range(m) if f"_dphip{i}_{j}" in vec]
        if inner:
            terms.append(f"(dyb * ({_sum(inner)})).sum(-1, keepdim=True)")
        terms += [
            f"_Q{i} * _phip{i}_{j}.sum(-1, keepdim=True)" for i in Q if f"_phip{i}_{j}" in vec
        ]
        lines.append(f"pb{j} = {_sum(terms) if terms else 'torch.zeros_like(dyb[..., :1])'}")
        outs.append(f"pb{j}")
    return [*lines, "return " + ", ".join(outs)]


def bias_vjp_lines(derived: Derived, plan: Plan) -> list[str]:
    """The body of `bias_vjp(y, v, dyb, params..)`: with dl/dy_j = sum_i g_i(S, p) phi_i'(y_j),
    P_i = sum_j dyb_j phi_i'(j) and Q_l = sum_i d2g_il P_i, it returns
    yb = dyb sum_i g_i phi_i'' + sum_l Q_l phi_l', vb likewise with d/dv, and per parameter
    pb = sum_i P_i dg_i/dp + sum_j dyb_j sum_i g_i dphi_i'/dp + sum_l Q_l sum_j dphi_l/dp.
    Only the pieces those use are printed."""
    b, used = derived.bias, plan.sums
    printer = TorchPrinter(like="y")
    vec, scal = vjp_vectors(b, used), vjp_scalars(b, used)
    sums = [f"_S{i} = _phi{i}.sum(-1, keepdim=True)" for i in used]
    tail = _vjp_tail(b, used, vec, scal)
    referenced = set(re.findall(r"_[A-Za-z0-9_]+", "\n".join(sums + tail)))
    vec = {n: e for n, e in vec.items() if n in referenced}
    summed = {n for n in vec if n.startswith(("_phi", "_phip"))}
    lines = _vectors(printer, vec, "y", {Y, V}, summed)
    return [*lines, *sums, *printer.block(scal, "_s"), *tail]


def act_grad2_lines(derived: Derived) -> list[str]:
    """The body of `act_grad2(x)`, the activation's second derivative (none for a linear
    memory); a constant is broadcast to x's shape."""
    a = derived.activation
    if a is None:
        return []
    printer = TorchPrinter(like="x")
    lines = _vectors(printer, {"_d2f": a.d2f}, "x", {X}, {"_d2f"})
    return [*lines, "return _d2f"]
