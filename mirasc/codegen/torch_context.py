"""What the torch templates (`elementwise.py`, `torch_backend.py`) read beyond the package
context: the printed element-wise code of the loss, activation and gates, and the plan's
strategies."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..derivation.plan import Plan
from ..derivation.symbolic import Derived, V, X, Y, Z
from ..ir.spec import Spec
from .package_context import unparsed
from .printing import TorchPrinter
from .safety import Code, located
from .torch_pieces import act_grad2_lines, bias_vjp_lines


@dataclass(frozen=True)
class ActivationCode:
    name: str
    text: Code  # the spec's formula, for the docstring
    lines: list  # body of act(x)
    grad_lines: list  # body of act_grad(x)


@dataclass(frozen=True)
class GateCode:
    name: str
    text: Code
    lines: list  # body of gate_<name>(z)


@dataclass(frozen=True)
class TorchContext:
    """The torch backend's printed pieces and strategies."""

    strategies: tuple  # the plan's strategies, the default first
    strategies_literal: Code
    chunked: bool  # the chunked dual form applies
    wy: bool  # the WY / UT form applies
    wy_scale: Code  # c in dl/dy = c (y - v), for the WY form
    loss_text: Code
    sums: tuple  # indices of the loss's sums that dl/dy needs
    sum_lines: list  # the element-wise phi_i and phi_i' vectors
    outer_grad_lines: list  # dg/dS_i per token
    grad: Code  # dl/dy from the two above
    gates: list  # GateCode per gate
    activation: ActivationCode | None
    bias_vjp_lines: list  # body of bias_vjp(y, v, dyb, params..), for the dual form's backward
    act_grad2_lines: list  # body of act_grad2(x)


def _elementwise(printer: TorchPrinter, outputs: dict, like: sp.Symbol, tensors: set, prefix: str):
    """CSE'd lines; outputs free of any tensor symbol are broadcast to `like`'s shape."""
    lines = printer.block(outputs, prefix)
    for name, e in outputs.items():
        if not (e.free_symbols & tensors):
            lines.append(
                f"{name} = torch.broadcast_to(torch.as_tensor({name}, dtype={like}.dtype), {like}.shape)"
            )
    return [Code(line) for line in lines]


def _activation(spec: Spec, derived: Derived) -> ActivationCode | None:
    a = derived.activation
    if a is None:
        return None
    body = spec.architecture.activation.body
    printer = TorchPrinter(like="x")
    with located(body.span):
        return ActivationCode(
            name=a.name,
            text=unparsed(body),
            lines=_elementwise(printer, {"_f": a.f}, X, {X}, "_a"),
            grad_lines=_elementwise(printer, {"_df": a.df}, X, {X}, "_a"),
        )


def _gates(spec: Spec, derived: Derived) -> list:
    gates = []
    for g, (name, expr) in zip(spec.gates, derived.gates, strict=True):
        with located(g.body.span):
            lines = _elementwise(TorchPrinter(like="z"), {"_g": expr}, Z, {Z}, "_z")
        gates.append(GateCode(name=name, text=unparsed(g.body), lines=lines))
    return gates


def torch_context(spec: Spec, derived: Derived, plan: Plan) -> TorchContext:
    b = derived.bias
    printer = TorchPrinter(like="y")
    vectors = {f"_phi{i}": b.values[i] for i in plan.sums}
    vectors.update({f"_dphi{i}": p for i, p in enumerate(b.dphi)})
    with located(spec.bias.body.span):
        sum_lines = _elementwise(printer, vectors, Y, {Y, V}, "_e")
        outer = [
            Code(line) for line in printer.block({f"_g{i}": g for i, g in enumerate(b.dg)}, "_s")
        ]
        vjp = bias_vjp_lines(derived, plan) if "chunked" in plan.strategies else []
    return TorchContext(
        strategies=plan.strategies,
        strategies_literal=Code(repr(plan.strategies)),
        chunked="chunked" in plan.strategies,
        wy="wy" in plan.strategies,
        wy_scale=Code(repr(plan.wy_scale or 0.0)),
        loss_text=unparsed(spec.bias.body),
        sums=plan.sums,
        sum_lines=sum_lines,
        outer_grad_lines=outer,
        grad=Code(" + ".join(f"_g{i} * _dphi{i}" for i in range(len(b.phi)))),
        gates=_gates(spec, derived),
        activation=_activation(spec, derived),
        bias_vjp_lines=[Code(line) for line in vjp],
        act_grad2_lines=[Code(line) for line in act_grad2_lines(derived)],
    )
