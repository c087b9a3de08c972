"""What every template of a generated package reads: the memory's shape (`MemoryShape`) and the
package-wide texts, names and gate operands (`PackageContext`). Values are already safe to print."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from ..derivation.symbolic import Derived
from ..ir import expr as E
from ..ir.spec import ConstVal, GateRef, Spec, bias_gate_names, to_data
from .safety import Code, docstring_text, header, safe_filename

# A retention gate's starting value when the spec names none: forget about 0.1% per token, a
# time constant longer than a training sequence, so training learns how much to forget instead
# of starting from a memory that erases itself (at 5% per token, Titans' MLP memory decayed
# towards zero weights and stayed at chance on MQAR).
RETENTION_TARGETS = {"decay": 0.001, "l2": 0.01, "lq": 0.999, "kl": 0.999}


@dataclass(frozen=True)
class MemoryShape:
    """The memory's structure as the templates branch on it (the kinds, never a spec's names)."""

    depth: int
    expansion: int
    residual: bool
    layer_norm: bool
    has_activation: bool
    retention: str  # "none", "decay", "l2", "lq" or "kl"
    first: bool  # decay's gradient taken at the retained state
    momentum: bool
    clip: Code | None  # the soft clamp's norm, or None
    lq_q: Code | None  # lq retention's q, or None
    centred: bool  # kl: the memory reads out * W - 1


@dataclass(frozen=True)
class PackageContext:
    """Package-wide texts and names: headers, docstrings, the spec literals, state and gate names,
    weight shapes, and the gate operands as `runtime.gate(...)` code."""

    header: Code
    source: Code
    spec_doc: Code
    derived_doc: Code
    spec_literal: Code
    spec_ir: Code
    state_names: Code
    gate_names: Code
    gate_targets: Code
    initial_kind: Code
    n_states: int
    required_state: Code
    weight_shapes: Code
    lr_gate: Code
    retention_gate: Code | None
    momentum_gate: Code | None
    loss_params: tuple  # the loss's gate parameters, by name
    loss_params_tuple: Code


def memory_shape(spec: Spec) -> MemoryShape:
    a, ret = spec.architecture, spec.retention
    return MemoryShape(
        depth=spec.depth,
        expansion=a.expansion,
        residual=a.residual,
        layer_norm=a.norm == "layernorm",
        has_activation=a.activation is not None,
        retention=ret.kind,
        first=ret.first,
        momentum=spec.has_momentum,
        clip=Code(repr(float(spec.clip))) if spec.clip is not None else None,
        lq_q=Code(repr(float(ret.q))) if ret.q is not None else None,
        centred=ret.centred,
    )


def gate_operand(op, role: str) -> Code | None:
    """`runtime.gate(...)` of a gate tensor or a constant, named for error messages."""
    if op is None:
        return None
    if isinstance(op, ConstVal):
        return Code(f"runtime.gate({float(op.value)!r}, {role!r}, q)")
    return Code(f'runtime.gate(gates["{op.name}"], "{op.name}", q)')


def package_context(spec: Spec, derived: Derived, source_text: str) -> PackageContext:
    ret = spec.retention
    return PackageContext(
        header=header(spec, source_text),
        source=Code(safe_filename(spec.source)),
        spec_doc=docstring_text(spec.text()),
        derived_doc=_derived_doc(derived),
        spec_literal=Code(repr(spec.text())),
        spec_ir=Code(repr(to_data(spec))),
        state_names=Code(repr(spec.state_names)),
        gate_names=Code(repr(spec.gate_names)),
        gate_targets=_gate_targets(spec),
        initial_kind=Code(_initial_kind(spec)),
        n_states=len(spec.state_names),
        required_state=Code(repr(_required_state(spec))),
        weight_shapes=_weight_shapes(spec),
        lr_gate=gate_operand(spec.algorithm.lr, "lr"),
        retention_gate=gate_operand(ret.gate, ret.kind),
        momentum_gate=gate_operand(spec.algorithm.momentum, "momentum"),
        loss_params=bias_gate_names(spec.bias),
        loss_params_tuple=Code(repr(bias_gate_names(spec.bias))),
    )


def _initial_kind(spec: Spec) -> str:
    if not spec.needs_initial_state:
        return "zeros"
    return "simplex" if spec.retention.kind == "kl" else "learned"


def _required_state(spec: Spec) -> str:
    """The error a call without `initial_state` gets, or '' when zeros are a valid start."""
    if not spec.needs_initial_state:
        return ""
    why = (
        "an MLP memory"
        if spec.architecture.kind == "mlp"
        else "kl retention: strictly positive weights"
    )
    return f"{spec.name} needs initial_state ({why})"


def _gate_targets(spec: Spec) -> Code:
    """Starting values a layer sets its gates' biases for (the formula gives the value): each
    gate's `init` where the spec states one; else the retention gate's default above. Other gates
    start where their formula puts z near 0."""
    targets = {}
    gate = spec.retention.gate
    if isinstance(gate, GateRef):
        targets[gate.name] = RETENTION_TARGETS[spec.retention.kind]
    targets.update({g.name: g.init for g in spec.gates if g.init is not None})
    return Code(repr(targets))


def _weight_shapes(spec: Spec) -> Code:
    """The memory's weight shapes, as code over Dk and Dv."""
    a = spec.architecture
    dims = ["Dk"] + [f"{a.expansion} * Dk"] * (a.depth - 1) + ["Dv"]
    return Code("[" + ", ".join(f"({i}, {o})" for i, o in itertools.pairwise(dims)) + "]")


def _derived_doc(d: Derived) -> Code:
    """The derivation as the package docstring shows it: loss, sums, dl/dy, second derivatives,
    the activation with two derivatives, the gates."""
    b = d.bias
    lines = [f"loss      l = {sp.sstr(b.g)}"]
    lines += [f"          _S{i} = sum({sp.sstr(p)})" for i, p in enumerate(b.phi)]
    lines.append(f"dl/dy     = {sp.sstr(b.grad())}")
    lines += [f"          d_S{i}/dy = {sp.sstr(p)}" for i, p in enumerate(b.dphi)]
    lines += [f"second    d2phi_{i}/dy2 = {sp.sstr(p)}" for i, p in enumerate(b.d2phi)]
    if d.activation is not None:
        a = d.activation
        lines.append(f"act       {a.name}(x) = {sp.sstr(a.f)}")
        lines.append(f"          {a.name}'(x) = {sp.sstr(a.df)}")
        lines.append(f"          {a.name}''(x) = {sp.sstr(a.d2f)}")
    lines += [f"gate      {name} = {sp.sstr(g)}" for name, g in d.gates]
    return docstring_text("\n".join(lines))


def unparsed(node) -> Code:
    """A spec expression printed back as text, safe inside a docstring."""
    return docstring_text(E.unparse(node), "")
