"""The checked spec: a typed, immutable IR of the four MIRAS choices, with every name resolved.

Expressions in it are `expr` trees with user and prelude calls inlined: a bias mentions only
`y`, `v`, gate names and numbers; an activation only `x` and numbers; a gate only `z` and numbers.
It imports nothing heavy, so the reference and the runtime can rebuild it from plain data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from . import expr as E

INIT_GRID = (-12.0, 12.0, 4801)  # z a layer searches (lo, hi, points) to start a gate at its init


@dataclass(frozen=True)
class GateRef:
    """A per-token, per-head scalar the op takes as an input tensor `[B, T, H]`."""

    name: str


@dataclass(frozen=True)
class ConstVal:
    value: float


@dataclass(frozen=True)
class Activation:
    name: str
    body: object  # expression in Name("x")


@dataclass(frozen=True)
class Architecture:
    """`linear` is depth 1; `mlp` is depth >= 1 with an activation between layers."""

    depth: int = 1
    expansion: int = 1
    activation: Activation | None = None
    residual: bool = False
    norm: str | None = None  # None | "layernorm"

    @property
    def kind(self) -> str:
        return "linear" if self.activation is None else "mlp"


@dataclass(frozen=True)
class Bias:
    name: str = field(compare=False)  # informational: the loss it was inlined from
    body: object = None  # expression in y, v and gate names


@dataclass(frozen=True)
class Retention:
    kind: str  # none | decay | l2 | lq | kl
    gate: GateRef | ConstVal | None = None
    first: bool = False
    q: float | None = None
    centred: bool = False  # kl: the memory reads out * W - 1 (a uniform row reads as zero)


@dataclass(frozen=True)
class Algorithm:
    kind: str  # gd | momentum
    lr: GateRef | ConstVal
    momentum: GateRef | ConstVal | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    body: object  # expression in Name("z")
    init: float | None = None  # the value a layer starts the gate at; None: its default


@dataclass(frozen=True)
class Spec:
    name: str
    architecture: Architecture
    bias: Bias
    retention: Retention
    algorithm: Algorithm
    chunk: int = 1
    clip: float | None = None
    gates: tuple = ()
    source: str = field(default="<spec>", compare=False)

    # ---- derived facts every stage needs -------------------------------------------------
    @property
    def module_name(self) -> str:
        return snake_case(self.name)

    @property
    def layer_name(self) -> str:
        return "".join(p[:1].upper() + p[1:] for p in self.module_name.split("_")) + "Layer"

    @property
    def gate_names(self) -> tuple:
        return tuple(g.name for g in self.gates)

    @property
    def depth(self) -> int:
        return self.architecture.depth

    @property
    def has_momentum(self) -> bool:
        return self.algorithm.kind == "momentum"

    @property
    def weight_names(self) -> tuple:
        letter = "A" if self.retention.kind == "lq" else "W"
        if self.depth == 1:
            return (letter,)
        return tuple(f"{letter}{i + 1}" for i in range(self.depth))

    @property
    def state_names(self) -> tuple:
        names = self.weight_names
        if self.has_momentum:
            names += tuple("S" + n[1:] for n in names)
        return names

    @property
    def needs_initial_state(self) -> bool:
        return self.architecture.kind == "mlp" or self.retention.kind == "kl"

    def text(self) -> str:
        """The normalised spec: every default explicit, every call inlined, re-parseable."""
        return spec_text(self)


def snake_case(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return s.lower()


def operand_text(op) -> str:
    if isinstance(op, GateRef):
        return op.name
    return E.format_number(op.value)


def spec_text(spec: Spec) -> str:
    a = spec.architecture
    if a.activation is None:
        arch = "linear"
        opts = []
    else:
        arch = "mlp"
        opts = [
            f"depth: {a.depth}",
            f"expansion: {a.expansion}",
            f"activation: {a.activation.name}",
        ]
    if a.residual:
        opts.append("residual: true")
    if a.norm:
        opts.append(f"norm: {a.norm}")
    arch_text = f"{arch}({', '.join(opts)})" if opts else arch
    r = spec.retention
    if r.kind == "none":
        ret = "none"
    elif r.kind == "lq":
        ret = f"lq(q: {E.format_number(r.q)}, keep: {operand_text(r.gate)})"
    elif r.kind == "kl":
        ret = f"kl(keep: {operand_text(r.gate)}{', centred: true' if r.centred else ''})"
    else:
        ret = f"{r.kind}({operand_text(r.gate)}{', first: true' if r.first else ''})"
    alg = spec.algorithm
    if alg.kind == "gd":
        alg_text = f"gd(lr: {operand_text(alg.lr)})"
    else:
        alg_text = f"momentum(lr: {operand_text(alg.lr)}, momentum: {operand_text(alg.momentum)})"
    bias_gates = bias_gate_names(spec.bias)
    params = "y, v" + ("; " + ", ".join(bias_gates) if bias_gates else "")
    lines = [
        f"# bias: {spec.bias.name}",
        f"memory {spec.name} {{",
        f"    architecture = {arch_text}",
        f"    bias({params}) = {E.unparse(spec.bias.body)}",
        f"    retention = {ret}",
        f"    algorithm = {alg_text}",
        f"    chunk = {spec.chunk}",
    ]
    if spec.clip is not None:
        lines.append(f"    clip = {E.format_number(spec.clip)}")
    lines += [f"    gate {g.name} = {E.unparse(g.body)}{init_text(g)}" for g in spec.gates]
    lines.append("}")
    if a.activation is not None:
        lines.append(f"activation {a.activation.name}(x) = {E.unparse(a.activation.body)}")
    return "\n".join(lines) + "\n"


def init_text(gate: Gate) -> str:
    """A gate declaration's `, init value` suffix; empty when it starts at its default."""
    return "" if gate.init is None else f", init {E.format_number(gate.init)}"


def bias_gate_names(bias: Bias) -> tuple:
    """Gate names a bias formula mentions, in first-use order."""
    seen = []
    for node in E.walk(bias.body):
        if isinstance(node, E.Name) and node.id not in ("y", "v") and node.id not in seen:
            seen.append(node.id)
    return tuple(seen)


# ---- plain-data round trip, so generated code can carry the IR without the compiler --------
_CLASSES = {
    c.__name__: c
    for c in (
        GateRef,
        ConstVal,
        Activation,
        Architecture,
        Bias,
        Retention,
        Algorithm,
        Gate,
        Spec,
        E.Num,
        E.Name,
        E.Call,
        E.Neg,
        E.Binary,
        E.Case,
        E.Piecewise,
    )
}


def to_data(obj) -> tuple:
    """An IR object as a flat table of records, printable as a Python literal with `repr`.

    Record i is `(class name, ((field, value), ...))` or `("tuple", (value, ...))`; a value is
    a str/float/int/bool/None or `(j,)`, a reference to an earlier record; the root is last.
    A table nests five levels whatever the expressions' depth, so the literal in a generated
    file never meets the Python parser's nesting limits."""
    table: list[tuple] = []

    def put(x):
        if x is None or isinstance(x, (str, bool, int, float)):
            return x
        if isinstance(x, tuple):
            record = ("tuple", tuple(put(item) for item in x))
        elif type(x).__name__ in _CLASSES:
            record = (
                type(x).__name__,
                tuple(
                    (f.name, put(getattr(x, f.name)))
                    for f in fields(x)
                    if f.name not in ("span", "source")
                ),
            )
        else:
            raise TypeError(f"cannot serialise {type(x).__name__}")
        table.append(record)
        return (len(table) - 1,)

    put(obj)
    return tuple(table)


def from_data(data: tuple):
    """Inverse of `to_data` (spans are lost: they are only for messages)."""
    built: list = []

    def get(value):
        return built[value[0]] if isinstance(value, tuple) else value

    for kind, items in data:
        if kind == "tuple":
            built.append(tuple(get(v) for v in items))
        else:
            built.append(_CLASSES[kind](**{k: get(v) for k, v in items}))
    return built[-1]


__all__ = [
    "Activation",
    "Algorithm",
    "Architecture",
    "Bias",
    "ConstVal",
    "Gate",
    "GateRef",
    "Retention",
    "Spec",
    "from_data",
    "to_data",
]
