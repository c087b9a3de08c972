"""A gate's stated starting value (`gate name = formula, init value`) must be reachable: the
formula is evaluated in plain floats on the grid of z a layer searches for the gate's starting
bias (`INIT_GRID`), and the init must lie within 1% of a value it takes there."""

from __future__ import annotations

import math
import operator

from ..errors import Span, SpecTypeError
from ..ir import expr as E
from ..ir.spec import INIT_GRID

_SCALAR = {  # BUILTINS on Python floats, for a gate's range (math raises where torch gives nan)
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "abs": abs,
    "sign": lambda x: float((x > 0) - (x < 0)),
    "sigmoid": lambda x: 0.5 * (1.0 + math.tanh(0.5 * x)),
    "tanh": math.tanh,
    "cosh": math.cosh,
    "sinh": math.sinh,
    "erf": math.erf,
    "softplus": lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
    "min": min,
    "max": max,
}
_SCALAR_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_SCALAR_COMPARE = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
INIT_TOLERANCE = 0.01  # relative: how close the formula must come to a gate's stated init


def _scalar(node, z: float) -> float:
    """Value of a checked gate formula at one z (it mentions only z and numbers)."""
    if isinstance(node, E.Num):
        return node.value
    if isinstance(node, E.Name):
        return z
    if isinstance(node, E.Neg):
        return -_scalar(node.operand, z)
    if isinstance(node, E.Binary):
        a, b = _scalar(node.left, z), _scalar(node.right, z)
        return math.pow(a, b) if node.op == "^" else _SCALAR_OPS[node.op](a, b)
    if isinstance(node, E.Piecewise):
        for c in node.cases:
            if _SCALAR_COMPARE[c.cmp](_scalar(c.left, z), _scalar(c.right, z)):
                return _scalar(c.value, z)
        return _scalar(node.otherwise, z)
    return _SCALAR[node.fn](*(_scalar(a, z) for a in node.args))


def _gate_values(body) -> list:
    """The gate's values on the grid of z a layer searches for its starting bias (finite only)."""
    lo, hi, n = INIT_GRID
    values = []
    for i in range(n):
        try:
            values.append(_scalar(body, lo + (hi - lo) * i / (n - 1)))
        except (ArithmeticError, ValueError):
            continue
    return [x for x in values if math.isfinite(x)]


def check_reachable(name: str, body, init: float, span: Span) -> None:
    """A gate's `init` must be a value its formula takes for some z the layer can start at."""
    values = _gate_values(body)
    if values and min(abs(x - init) for x in values) <= INIT_TOLERANCE * abs(init) + 1e-6:
        return
    lo, hi, _ = INIT_GRID
    reach = f"[{min(values):.4g}, {max(values):.4g}]" if values else "no finite value"
    raise SpecTypeError(
        f"gate {name!r} cannot start at {E.format_number(init)}: "
        f"its formula takes {reach} for z in [{lo:g}, {hi:g}]",
        span,
        hint="state an init in that range, or widen the formula (a larger factor, an offset)",
    )
