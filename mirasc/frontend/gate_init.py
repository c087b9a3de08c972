"""A gate's stated starting value (`gate name = formula, init value`) must be reachable: the
formula is evaluated once over the whole grid of z a layer searches for the gate's starting
bias (`INIT_GRID`, as numpy arrays, so its cost is one pass over the tree), and the init must lie
within 1% of a finite value it takes there."""

from __future__ import annotations

import math

import numpy as np

from ..errors import Span, SpecTypeError
from ..ir import expr as E
from ..ir.spec import INIT_GRID

_FUNCTIONS = {  # the language's built-ins on arrays (nan or inf where a float would raise)
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sign": np.sign,
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "tanh": np.tanh,
    "cosh": np.cosh,
    "sinh": np.sinh,
    "erf": np.vectorize(math.erf, otypes=[float]),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "min": np.minimum,
    "max": np.maximum,
}
_OPERATORS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}
_COMPARE = {
    "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal,
}  # fmt: skip
INIT_TOLERANCE = 0.01  # relative: how close the formula must come to a gate's stated init


def _values(node, z: np.ndarray) -> np.ndarray:
    """A checked gate formula (it mentions only z and numbers) at every z of the grid."""
    if isinstance(node, E.Num):
        return np.full_like(z, node.value)
    if isinstance(node, E.Name):
        return z
    if isinstance(node, E.Neg):
        return -_values(node.operand, z)
    if isinstance(node, E.Binary):
        return _OPERATORS[node.op](_values(node.left, z), _values(node.right, z))
    if isinstance(node, E.Piecewise):  # the first true condition wins
        conditions = [_COMPARE[c.cmp](_values(c.left, z), _values(c.right, z)) for c in node.cases]
        arms = [_values(c.value, z) for c in node.cases]
        return np.select(conditions, arms, default=_values(node.otherwise, z))
    return _FUNCTIONS[node.fn](*(_values(a, z) for a in node.args))


def _gate_values(body) -> np.ndarray:
    """The gate's finite values on the grid of z a layer searches for its starting bias."""
    with np.errstate(all="ignore"):
        values = _values(body, np.linspace(*INIT_GRID))
    return values[np.isfinite(values)]


def check_reachable(name: str, body, init: float, span: Span) -> None:
    """A gate's `init` must be a value its formula takes for some z the layer can start at."""
    values = _gate_values(body)
    if values.size and np.abs(values - init).min() <= INIT_TOLERANCE * abs(init) + 1e-6:
        return
    lo, hi, _ = INIT_GRID
    reach = f"[{values.min():.4g}, {values.max():.4g}]" if values.size else "no finite value"
    raise SpecTypeError(
        f"gate {name!r} cannot start at {E.format_number(init)}: "
        f"its formula takes {reach} for z in [{lo:g}, {hi:g}]",
        span,
        hint="state an init in that range, or widen the formula (a larger factor, an offset)",
    )
