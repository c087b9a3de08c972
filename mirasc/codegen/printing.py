"""SymPy to code: one printer per target over a shared whitelist base.

The base prints arithmetic, numbers, `Piecewise` (as nested `where`), relations and a fixed set
of functions, with small integer powers expanded into multiplications. Anything else is a
`CodegenError`, never silently printed: a target subclass only names its functions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import sympy as sp
from sympy.printing.str import StrPrinter

from ..derivation.symbolic import Sigmoid, Softplus
from ..errors import CodegenError

MAX_EXPANDED_POWER = 8  # x**n for |n| <= 8 prints as multiplications, beyond as pow()


class KernelPrinter(StrPrinter):
    """Whitelisting printer; subclasses set `language`, `functions`, `where` and `pow`."""

    language = "generic"
    functions: ClassVar[dict] = {}  # sympy function class -> target function name
    where = "where"
    pow = "pow"

    _allowed = (
        sp.Symbol,
        sp.Add,
        sp.Mul,
        sp.Pow,
        sp.Piecewise,
        sp.core.relational.Relational,
        sp.Or,
        sp.And,
    )

    def _print(self, expr, **kwargs):
        relational = isinstance(expr, sp.core.relational.Relational)
        if isinstance(expr, sp.Basic) and not relational and expr.is_number:
            return self._number(expr)
        if isinstance(expr, sp.Basic) and not (
            isinstance(expr, self._allowed) or type(expr) in self.functions
        ):
            raise CodegenError(
                f"the {self.language} printer cannot print {type(expr).__name__} ({expr})",
                hint="the formula uses an operation this backend does not support",
            )
        return super()._print(expr, **kwargs)

    def _number(self, expr) -> str:
        try:
            value = float(expr)
        except TypeError:
            raise CodegenError(f"{expr} is not a real number") from None
        if not math.isfinite(value):
            raise CodegenError(f"the derivation produced a non-finite constant ({expr})")
        return repr(value)

    def _print_Function(self, expr):
        name = self.functions[type(expr)]
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp.is_Integer and 1 <= abs(int(exp)) <= MAX_EXPANDED_POWER:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"] + 1)
            n = abs(int(exp))
            prod = b if n == 1 else "(" + "*".join([b] * n) + ")"  # parenthesised: x**2 is atomic
            return prod if exp > 0 else f"1.0/{prod}"
        if exp == sp.Rational(1, 2):
            return f"{self.functions[sp.sqrt]}({self._print(base)})"
        if exp == sp.Rational(-1, 2):
            return f"1.0/{self.functions[sp.sqrt]}({self._print(base)})"
        return self._general_pow(base, exp)

    def _general_pow(self, base, exp) -> str:
        """base**exp for anything but small integers and +-1/2."""
        return f"{self.pow}({self._print(base)}, {self._print(exp)})"

    def _print_Piecewise(self, expr):
        *arms, (last, cond) = expr.args
        if cond != sp.true:
            raise CodegenError(f"piecewise without an otherwise arm: {expr}")
        out = self._branch(last)
        for value, c in reversed(arms):
            out = f"{self.where}({self._print(c)}, {self._branch(value)}, {out})"
        return out

    def _branch(self, value) -> str:
        """A where() arm; targets whose where() needs tensor arms override this."""
        return self._print(value)

    def _print_Or(self, expr):  # conditions SymPy merged from piecewise arms
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_And(self, expr):
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Relational(self, expr):
        lhs = self.parenthesize(expr.lhs, sp.printing.precedence.PRECEDENCE["Add"])
        rhs = self.parenthesize(expr.rhs, sp.printing.precedence.PRECEDENCE["Add"])
        return f"({lhs} {expr.rel_op} {rhs})"

    def block(self, outputs: dict, prefix: str = "_t") -> list[str]:
        """`name = code` lines for several expressions, with common sub-expressions shared. A
        shared sub-expression that is a number goes back into its uses as a float, so that a
        function of it prints as the number it is (fuzz-found: log(sqrt(1e30)) printed as
        torch.log of a Python float)."""
        names = list(outputs)
        shared, reduced = sp.cse(
            list(outputs.values()), symbols=sp.numbered_symbols(prefix), order="none"
        )
        numbers, temps = {}, []
        for t, e in shared:
            e = e.xreplace(numbers)
            value = e.evalf(20) if e.is_number else None
            if value is not None and value.is_Float:
                numbers[t] = value
            else:
                temps.append((t, e))
        reduced = [e.xreplace(numbers) for e in reduced]
        lines = [f"{t} = {self.doprint(e)}" for t, e in temps]
        lines += [f"{n} = {self.doprint(e)}" for n, e in zip(names, reduced, strict=True)]
        return lines


class TorchPrinter(KernelPrinter):
    """PyTorch element-wise code; scalars broadcast as Python floats.

    `like` names a tensor in scope whose dtype constant where() arms take, so that fp64 code
    stays fp64 (torch.where of two Python floats would give the default float32).
    """

    language = "PyTorch"

    def __init__(self, like: str = "x", **settings):
        super().__init__(settings)
        self.like = like

    def _branch(self, value) -> str:
        if value.is_number:
            return f"{self.like}.new_tensor({self._number(value)})"
        return self._print(value)

    where = "torch.where"
    pow = "torch.pow"
    functions: ClassVar[dict] = {
        sp.exp: "torch.exp",
        sp.log: "torch.log",
        sp.sqrt: "torch.sqrt",
        sp.Abs: "torch.abs",
        sp.sign: "torch.sign",
        sp.tanh: "torch.tanh",
        sp.cosh: "torch.cosh",
        sp.sinh: "torch.sinh",
        sp.erf: "torch.special.erf",
        Sigmoid: "torch.sigmoid",
        Softplus: "torch.nn.functional.softplus",
    }


class TritonPrinter(KernelPrinter):
    """Triton element-wise code for fp32 values (kernels load and accumulate in fp32).

    Triton's core language has no tanh, cosh, sinh, softplus or sign: they are printed from
    exp, sigmoid and where in numerically stable forms, tanh and sinh through helpers that are
    accurate near 0 too (`stable_tanh`, `stable_sinh`). Non-integer powers are exp(e * log(b))
    (NaN for a negative base, as in torch); integer powers beyond 8 call the `ipow` helper
    (a static loop of multiplications). `helpers` records the helpers for the kernel file.
    """

    language = "Triton"
    where = "tl.where"
    functions: ClassVar[dict] = {
        sp.exp: "tl.exp",
        sp.log: "tl.log",
        sp.sqrt: "tl.sqrt",
        sp.Abs: "tl.abs",
        sp.erf: "tl.erf",
        Sigmoid: "tl.sigmoid",
        sp.sign: None,
        sp.tanh: None,
        sp.cosh: None,
        sp.sinh: None,
        Softplus: None,
    }

    def __init__(self, **settings):
        super().__init__(settings)
        self.helpers: set[str] = set()

    def _print_Function(self, expr):
        (arg,) = (self._print(a) for a in expr.args)
        kind = type(expr)
        if kind is sp.tanh:  # accurate near 0, where 2 sigmoid(2x) - 1 is not
            self.helpers.add("stable_tanh")
            return f"stable_tanh({arg})"
        if kind is sp.cosh:
            return f"(0.5*(tl.exp({arg}) + tl.exp(-({arg}))))"
        if kind is sp.sinh:  # accurate near 0, where the difference of exponentials is not
            self.helpers.add("stable_sinh")
            return f"stable_sinh({arg})"
        if kind is Softplus:  # max(x, 0) + log(1 + exp(-|x|)): no overflow
            return f"(tl.maximum({arg}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({arg}))))"
        if kind is sp.sign:
            return f"tl.where(({arg}) > 0, 1.0, tl.where(({arg}) < 0, -1.0, 0.0))"
        return super()._print_Function(expr)

    def _general_pow(self, base, exp) -> str:
        b = self._print(base)
        if exp.is_Integer:  # |n| > 8 (smaller ones are expanded)
            self.helpers.add("ipow")
            power = f"ipow({b}, {abs(int(exp))})"
            return power if exp > 0 else f"1.0/{power}"
        return f"tl.exp(({self._print(exp)})*tl.log({b}))"
