"""AST to Spec: resolve names against the spec, the prelude and the built-in functions; check
arities, parameter ranges and kinds; inline every user and prelude call. All failures are
located `MirascError`s."""

from __future__ import annotations

import dataclasses
import keyword
import math
import operator
from functools import lru_cache
from importlib import resources

from . import ast
from . import expr as E
from .errors import MirascError, Span, SpecLimitError, SpecNameError, SpecTypeError, did_you_mean
from .parser import parse
from .spec import (
    INIT_GRID,
    Activation,
    Algorithm,
    Architecture,
    Bias,
    ConstVal,
    Gate,
    GateRef,
    Retention,
    Spec,
)

BUILTINS = {  # name -> arity; `sum` and `piecewise` are handled specially
    "exp": 1,
    "log": 1,
    "sqrt": 1,
    "abs": 1,
    "sign": 1,
    "sigmoid": 1,
    "tanh": 1,
    "cosh": 1,
    "sinh": 1,
    "erf": 1,
    "softplus": 1,
    "min": 2,
    "max": 2,
    "sum": 1,
}

RESERVED = {
    "torch", "triton", "tl", "math", "runtime", "mirasc", "nn", "F",
    "q", "k", "v", "x", "y", "z", "scale", "initial_state", "output_final_state", "backend",
    "op", "Layer", "SPEC", "SPEC_IR", "STATE_NAMES", "self", "ln_weight", "ln_bias", "state",
    "sum", "piecewise", "otherwise", "memory", "loss", "activation", "gate", "const",
}  # fmt: skip

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
MAX_EXPR_NODES = 4000  # after inlining; bounds derivation time
MAX_EXPONENT = 64.0  # literal exponents beyond this only overflow
SETTINGS = ("architecture", "bias", "retention", "algorithm", "chunk", "clip")
RETENTIONS = ("none", "decay", "l2", "lq", "kl")
ALGORITHMS = ("gd", "momentum")
PARAM_RULES = {  # prelude loss parameter -> (test, what it must be)
    ("lp", "p"): (lambda x: x >= 1, "p >= 1 (l_p with p < 1 is not a norm and its gradient diverges at 0)"),
    ("huber", "delta"): (lambda x: x > 0, "delta > 0"),
    ("yaad", "delta"): (lambda x: x > 0, "delta > 0"),
}  # fmt: skip


def check_identifier(name: str, span: Span, what: str) -> None:
    """Names become Python identifiers in generated code: keep them safe and unambiguous."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in ("None", "True", "False"):
        raise SpecNameError(f"{what} name {name!r} is a Python keyword", span)
    if name.startswith("_"):
        raise SpecNameError(
            f"{what} name {name!r} starts with '_', which is reserved for generated code", span
        )
    if name in RESERVED:
        raise SpecNameError(f"{what} name {name!r} is reserved", span)


@lru_cache(maxsize=1)
def prelude() -> ast.Module:
    text = resources.files("mirasc").joinpath("prelude.miras").read_text(encoding="utf-8")
    return parse(text, "<prelude>")


class _Scope:
    """Definitions visible to a spec: the prelude, overridden by the file's own definitions."""

    def __init__(self, module: ast.Module):
        self.defs: dict[str, ast.FunctionDef] = {f.name: f for f in prelude().functions}
        seen: dict[str, ast.FunctionDef] = {}
        for f in module.functions:
            if f.name in seen:
                raise SpecNameError(f"{f.kind} {f.name!r} is defined twice", f.span)
            check_identifier(f.name, f.span, f.kind)
            for p in f.params + f.extra:
                if f.params.count(p) + f.extra.count(p) > 1:
                    raise SpecNameError(f"parameter {p!r} appears twice in {f.name!r}", f.span)
            want = 2 if f.kind == "loss" else 1
            if len(f.params) != want:
                shape = "(y, v; params)" if f.kind == "loss" else "(x; params)"
                raise SpecTypeError(
                    f"{f.kind} {f.name!r} takes {want} positional parameter(s), not {len(f.params)}",
                    f.span,
                    hint=f"write {f.kind} {f.name}{shape} = ...",
                )
            seen[f.name] = f
        self.defs.update(seen)


class _Inliner:
    """Resolves an expression: binds parameters, inlines definitions, rejects unknown names."""

    def __init__(self, scope: _Scope, context: str):
        self.scope = scope
        self.context = context

    def resolve(self, node, env: dict, stack: tuple = ()):
        if isinstance(node, E.Num):
            return node
        if isinstance(node, E.Name):
            if node.id in env:
                value = env[node.id]
                if value.span is E.NO_SPAN:  # a bare variable: point at this use
                    value = dataclasses.replace(value, span=node.span)
                return value
            raise SpecNameError(
                f"unknown name {node.id!r} in {self.context}",
                node.span,
                hint=did_you_mean(node.id, env)
                or f"names available here: {', '.join(sorted(env))}",
            )
        if isinstance(node, E.Neg):
            return E.Neg(self.resolve(node.operand, env, stack), node.span)
        if isinstance(node, E.Binary):
            left = self.resolve(node.left, env, stack)
            right = self.resolve(node.right, env, stack)
            if node.op == "^" and isinstance(right, E.Num) and abs(right.value) > MAX_EXPONENT:
                raise SpecLimitError(
                    f"exponent {E.format_number(right.value)} is too large (|p| <= {MAX_EXPONENT:g})",
                    node.right.span,
                )
            return self._limit(E.Binary(node.op, left, right, node.span))
        if isinstance(node, E.Piecewise):
            cases = tuple(
                E.Case(
                    self.resolve(c.left, env, stack),
                    c.cmp,
                    self.resolve(c.right, env, stack),
                    self.resolve(c.value, env, stack),
                    c.span,
                )
                for c in node.cases
            )
            return self._limit(
                E.Piecewise(cases, self.resolve(node.otherwise, env, stack), node.span)
            )
        assert isinstance(node, E.Call)
        return self._limit(self.call(node, env, stack))

    def _limit(self, node):
        if E.size(node) > MAX_EXPR_NODES:
            raise SpecLimitError(
                f"{self.context} grows past {MAX_EXPR_NODES} nodes once definitions are inlined",
                node.span,
            )
        return node

    def call(self, node: E.Call, env: dict, stack: tuple):
        name = node.fn
        if name in BUILTINS:
            if node.params:
                raise SpecTypeError(f"{name}() takes no parameters after ';'", node.span)
            if len(node.args) != BUILTINS[name]:
                raise SpecTypeError(
                    f"{name}() takes {BUILTINS[name]} argument(s), got {len(node.args)}", node.span
                )
            args = tuple(self.resolve(a, env, stack) for a in node.args)
            return E.Call(name, args, (), node.span)
        if name not in self.scope.defs:
            raise SpecNameError(
                f"unknown function {name!r}",
                node.span,
                hint=did_you_mean(name, list(BUILTINS) + list(self.scope.defs)),
            )
        fdef = self.scope.defs[name]
        if name in stack:
            chain = " -> ".join((*stack[stack.index(name) :], name))
            raise SpecTypeError(f"recursive definition: {chain}", node.span)
        if len(node.args) != len(fdef.params) or len(node.params) != len(fdef.extra):
            want = ", ".join(fdef.params) + ("; " + ", ".join(fdef.extra) if fdef.extra else "")
            raise SpecTypeError(
                f"{fdef.kind} {name!r} is called with the wrong number of arguments",
                node.span,
                hint=f"its signature is {name}({want})",
            )
        values = [self.resolve(a, env, stack) for a in node.args + node.params]
        inner_env = dict(zip(fdef.params + fdef.extra, values, strict=True))
        return _Inliner(self.scope, f"{fdef.kind} {name!r}").resolve(
            fdef.body, inner_env, (*stack, name)
        )


def _check_levels(body, context: str, has_sum_level: bool) -> None:
    """In a loss, y and v live inside sum(...) only and sums do not nest."""
    stack = [(body, False)]
    found_y = False
    while stack:
        node, inside = stack.pop()
        if isinstance(node, E.Call) and node.fn == "sum":
            if not has_sum_level:
                raise SpecTypeError(
                    f"sum(...) is only allowed in a loss, not in {context}", node.span
                )
            if inside:
                raise SpecTypeError(
                    "sums do not nest: a loss is g(S_1..S_m) with S_i = sum(phi_i(y_j, v_j))",
                    node.span,
                )
            stack.append((node.args[0], True))
            continue
        if isinstance(node, E.Name) and node.id in ("y", "v") and has_sum_level:
            if not inside:
                raise SpecTypeError(
                    f"{node.id!r} is a vector: use it inside sum(...)",
                    node.span,
                    hint="e.g. sum((y - v)^2); outside sums a loss combines scalars",
                )
            found_y = found_y or node.id == "y"
        stack.extend((c, inside) for c in E.children(node))
    if has_sum_level and not found_y:
        raise SpecTypeError(f"{context} does not depend on the prediction y", body.span)


class _MemoryChecker:
    def __init__(self, mem: ast.MemoryDecl, scope: _Scope, file: str):
        self.mem = mem
        self.scope = scope
        self.file = file
        self.settings: dict[str, ast.Setting] = {}
        self.bias_formula: ast.FunctionDef | None = None
        self.gates: dict[str, ast.GateDecl] = {}
        self.consts: dict[str, ast.ConstDecl] = {}
        self.used: set[str] = set()

    def run(self) -> Spec:
        mem = self.mem
        check_identifier(mem.name, mem.span, "memory")
        for m in mem.members:
            self.collect(m)
        if self.bias_formula is not None and "bias" in self.settings:
            raise SpecNameError(
                "bias is given twice (a setting and a formula)", self.bias_formula.span
            )
        for req in ("architecture", "bias", "retention", "algorithm"):
            if req not in self.settings and not (req == "bias" and self.bias_formula):
                raise SpecTypeError(f"memory {mem.name!r} has no {req}", mem.span)
        arch = self.architecture(self.settings["architecture"].value)
        bias = self.bias()
        retention = self.retention(self.settings["retention"].value)
        algorithm = self.algorithm(self.settings["algorithm"].value)
        if retention.first and algorithm.kind != "gd":
            raise SpecTypeError(
                "decay(first: true) is defined for gd only",
                self.settings["retention"].value.span,
            )
        if algorithm.kind == "momentum" and retention.kind not in ("none", "decay"):
            raise SpecTypeError(
                f"momentum is defined with none or decay retention, not {retention.kind}",
                self.settings["algorithm"].value.span,
                hint="design §3 gives momentum with decay(alpha) (Titans eqs. 13-14)",
            )
        chunk = self.integer("chunk", 1, 1, 4096)
        clip = self.positive("clip")
        gates = self.check_gates()
        return Spec(mem.name, arch, bias, retention, algorithm, chunk, clip, gates, self.file)

    # ---- members -------------------------------------------------------------------------
    def collect(self, m) -> None:
        if isinstance(m, ast.Setting):
            if m.name not in SETTINGS:
                raise SpecNameError(
                    f"unknown setting {m.name!r}", m.span, hint=did_you_mean(m.name, SETTINGS)
                )
            if m.name in self.settings:
                raise SpecNameError(f"setting {m.name!r} is given twice", m.span)
            self.settings[m.name] = m
        elif isinstance(m, ast.FunctionDef):
            if self.bias_formula is not None:
                raise SpecNameError("bias is given twice", m.span)
            self.bias_formula = m
        else:
            table = self.gates if isinstance(m, ast.GateDecl) else self.consts
            kind = "gate" if isinstance(m, ast.GateDecl) else "const"
            check_identifier(m.name, m.span, kind)
            if m.name in self.gates or m.name in self.consts:
                raise SpecNameError(f"{m.name!r} is declared twice", m.span)
            table[m.name] = m

    def operand(self, value, what: str):
        """A gate name, a const name or a number."""
        if isinstance(value, ast.NumberValue):
            return ConstVal(value.value)
        if isinstance(value, ast.RefValue):
            if value.name in self.consts:
                self.used.add(value.name)
                return ConstVal(self.consts[value.name].value)
            if value.name in self.gates:
                self.used.add(value.name)
                return GateRef(value.name)
            raise SpecNameError(
                f"{what}: {value.name!r} is neither a gate nor a const of this memory",
                value.span,
                hint=did_you_mean(value.name, list(self.gates) + list(self.consts))
                or f"declare it: `gate {value.name} = sigmoid(z)`",
            )
        raise SpecTypeError(f"{what} must be a number, a gate or a const", value.span)

    def args(self, value, what: str, names: tuple, required: tuple) -> dict:
        """Positional and keyword arguments of a configured choice, by parameter name."""
        if isinstance(value, ast.RefValue):
            value = ast.Configured(value.name, (), (), value.span)
        if not isinstance(value, ast.Configured):
            raise SpecTypeError(f"{what} expects a name or a call such as name(...)", value.span)
        if len(value.args) > len(names):
            raise SpecTypeError(
                f"{value.name}() takes at most {len(names)} positional argument(s)", value.span
            )
        out = dict(zip(names, value.args, strict=False))
        for kw in value.kwargs:
            if kw.name not in names:
                raise SpecNameError(
                    f"{value.name}() has no parameter {kw.name!r}",
                    kw.span,
                    hint=did_you_mean(kw.name, names) or f"its parameters: {', '.join(names)}",
                )
            if kw.name in out:
                raise SpecNameError(f"parameter {kw.name!r} is given twice", kw.span)
            out[kw.name] = kw.value
        for r in required:
            if r not in out:
                raise SpecTypeError(f"{value.name}() needs {r!r}", value.span)
        return out

    def number(self, value, what: str, lo: float, hi: float, integer: bool = False) -> float:
        if isinstance(value, ast.RefValue) and value.name in self.consts:
            self.used.add(value.name)
            value = ast.NumberValue(self.consts[value.name].value, value.span)
        if not isinstance(value, ast.NumberValue):
            raise SpecTypeError(f"{what} must be a number", value.span)
        x = value.value
        if integer and not float(x).is_integer():
            raise SpecTypeError(
                f"{what} must be a whole number, got {E.format_number(x)}", value.span
            )
        if not lo <= x <= hi:
            raise SpecTypeError(
                f"{what} must be between {E.format_number(lo)} and {E.format_number(hi)}, "
                f"got {E.format_number(x)}",
                value.span,
            )
        return int(x) if integer else x

    def flag(self, value, what: str) -> bool:
        if not isinstance(value, ast.BoolValue):
            raise SpecTypeError(f"{what} must be true or false", value.span)
        return value.value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        if name not in self.settings:
            return default
        return self.number(self.settings[name].value, name, lo, hi, integer=True)

    def positive(self, name: str) -> float | None:
        if name not in self.settings:
            return None
        return self.number(self.settings[name].value, name, 1e-12, 1e12)

    def architecture(self, value) -> Architecture:
        kind = value.name if isinstance(value, (ast.RefValue, ast.Configured)) else None
        if kind not in ("linear", "mlp"):
            raise SpecTypeError(
                "architecture must be linear or mlp(...)",
                value.span,
                hint=did_you_mean(kind, ("linear", "mlp")) if kind else None,
            )
        names = ("residual", "norm")
        if kind == "mlp":
            names = ("depth", "expansion", "activation", *names)
        a = self.args(value, "architecture", names, ())
        residual = self.flag(a["residual"], "residual") if "residual" in a else False
        norm = None
        if "norm" in a:
            nv = a["norm"]
            if not isinstance(nv, ast.RefValue) or nv.name not in ("layernorm", "none"):
                raise SpecTypeError("norm must be layernorm or none", nv.span)
            norm = None if nv.name == "none" else "layernorm"
        if kind == "linear":
            return Architecture(1, 1, None, residual, norm)
        depth = self.number(a["depth"], "depth", 1, 8, integer=True) if "depth" in a else 2
        expansion = (
            self.number(a["expansion"], "expansion", 1, 16, integer=True) if "expansion" in a else 4
        )
        act_value = a.get("activation", ast.RefValue("gelu", value.span))
        return Architecture(depth, expansion, self.activation(act_value), residual, norm)

    def activation(self, value) -> Activation:
        if not isinstance(value, ast.RefValue):
            raise SpecTypeError("activation must be the name of an activation", value.span)
        fdef = self.scope.defs.get(value.name)
        if fdef is None or fdef.kind != "activation":
            acts = [n for n, d in self.scope.defs.items() if d.kind == "activation"]
            raise SpecNameError(
                f"unknown activation {value.name!r}",
                value.span,
                hint=did_you_mean(value.name, acts),
            )
        if fdef.extra:
            raise SpecTypeError(
                f"activation {value.name!r} has parameters; an MLP memory needs one without",
                value.span,
                hint=f"define `activation my_act(x) = {value.name}(x; ...)` with the values fixed",
            )
        body = _Inliner(self.scope, f"activation {value.name!r}").resolve(
            fdef.body, {fdef.params[0]: E.Name("x")}, (value.name,)
        )
        _check_levels(body, f"activation {value.name!r}", has_sum_level=False)
        return Activation(value.name, body)

    def bias(self) -> Bias:
        y, v = E.Name("y"), E.Name("v")
        if self.bias_formula is not None:
            f = self.bias_formula
            env = {}
            for p in f.extra:
                env[p] = self.expression_operand(p, f.span)
            if len(f.params) != 2:
                raise SpecTypeError("bias formula takes (y, v; params)", f.span)
            env[f.params[0]], env[f.params[1]] = y, v
            body = _Inliner(self.scope, "bias").resolve(f.body, env, ())
            _check_levels(body, "the bias", has_sum_level=True)
            return Bias("custom", body)
        value = self.settings["bias"].value
        name = value.name if isinstance(value, (ast.RefValue, ast.Configured)) else None
        fdef = self.scope.defs.get(name) if name else None
        if fdef is None or fdef.kind != "loss":
            losses = [n for n, d in self.scope.defs.items() if d.kind == "loss"]
            raise SpecNameError(
                f"unknown loss {name!r}" if name else "bias must name a loss",
                value.span,
                hint=did_you_mean(name, losses) if name else None,
            )
        a = self.args(value, "bias", fdef.extra, fdef.extra)
        env = {fdef.params[0]: y, fdef.params[1]: v}
        for pname, pval in a.items():
            op = self.operand(pval, f"{name}({pname})")
            if isinstance(op, ConstVal):
                rule = PARAM_RULES.get((name, pname))
                if rule and not rule[0](op.value):
                    raise SpecTypeError(f"{name}() needs {rule[1]}", pval.span)
                env[pname] = E.Num(op.value, pval.span)
            else:
                env[pname] = E.Name(op.name, pval.span)
        body = _Inliner(self.scope, f"loss {name!r}").resolve(fdef.body, env, (name,))
        _check_levels(body, f"loss {name!r}", has_sum_level=True)
        return Bias(name, body)

    def expression_operand(self, name: str, span: Span):
        if name in self.consts:
            self.used.add(name)
            return E.Num(self.consts[name].value, span)
        if name in self.gates:
            self.used.add(name)
            return E.Name(name, span)
        raise SpecNameError(
            f"bias parameter {name!r} is neither a gate nor a const of this memory",
            span,
            hint=f"declare it: `const {name} = 1.0` or `gate {name} = sigmoid(z)`",
        )

    def retention(self, value) -> Retention:
        kind = value.name if isinstance(value, (ast.RefValue, ast.Configured)) else None
        if kind not in RETENTIONS:
            raise SpecTypeError(
                f"unknown retention {kind!r}" if kind else "retention must name a retention",
                value.span,
                hint=did_you_mean(kind, RETENTIONS) if kind else f"one of {', '.join(RETENTIONS)}",
            )
        if kind == "none":
            self.args(value, "retention", (), ())
            return Retention("none")
        if kind in ("decay", "l2"):
            gate_name = "alpha" if kind == "decay" else "lam"
            names = (gate_name, "first") if kind == "decay" else (gate_name,)
            a = self.args(value, "retention", names, (gate_name,))
            first = self.flag(a["first"], "first") if "first" in a else False
            return Retention(kind, self.operand(a[gate_name], f"{kind}()"), first)
        if kind == "lq":
            a = self.args(value, "retention", ("q", "keep"), ("q", "keep"))
            q = self.number(a["q"], "q", 1.0 + 1e-6, 16.0)
            return Retention("lq", self.operand(a["keep"], "lq(keep)"), q=q)
        a = self.args(value, "retention", ("keep",), ("keep",))
        return Retention("kl", self.operand(a["keep"], "kl(keep)"))

    def algorithm(self, value) -> Algorithm:
        kind = value.name if isinstance(value, (ast.RefValue, ast.Configured)) else None
        if kind not in ALGORITHMS:
            raise SpecTypeError(
                f"unknown algorithm {kind!r}" if kind else "algorithm must name an algorithm",
                value.span,
                hint=did_you_mean(kind, ALGORITHMS) if kind else "gd(lr: ...) or momentum(...)",
            )
        if kind == "gd":
            a = self.args(value, "algorithm", ("lr",), ("lr",))
            return Algorithm("gd", self.operand(a["lr"], "gd(lr)"))
        a = self.args(value, "algorithm", ("lr", "momentum"), ("lr", "momentum"))
        return Algorithm(
            "momentum",
            self.operand(a["lr"], "momentum(lr)"),
            self.operand(a["momentum"], "momentum()"),
        )

    def check_gates(self) -> tuple:
        gates = []
        for name, g in self.gates.items():
            if name not in self.used:
                raise SpecNameError(
                    f"gate {name!r} is declared but never used",
                    g.span,
                    hint="use it in the bias, retention or algorithm, or remove it",
                )
            env = {"z": E.Name("z")}
            env.update({c: E.Num(d.value, d.span) for c, d in self.consts.items()})
            body = _Inliner(self.scope, f"gate {name!r}").resolve(g.body, env, ())
            _check_levels(body, f"gate {name!r}", has_sum_level=False)
            if not any(isinstance(n, E.Name) and n.id == "z" for n in E.walk(body)):
                raise SpecTypeError(
                    f"gate {name!r} does not depend on its pre-activation z",
                    g.span,
                    hint=f"a fixed value is a const: `const {name} = ...`",
                )
            self.used.update(n.id for n in E.walk(g.body) if isinstance(n, E.Name))
            if g.init is not None:
                _check_reachable(name, body, g.init, g.span)
            gates.append(Gate(name, body, g.init))
        for name, c in self.consts.items():
            if name not in self.used:
                raise SpecNameError(f"const {name!r} is declared but never used", c.span)
        return tuple(gates)


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


def _check_reachable(name: str, body, init: float, span: Span) -> None:
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


def check(module: ast.Module) -> Spec:
    """The one memory of a parsed file, checked and resolved."""
    scope = _Scope(module)
    for f in module.functions:  # check every definition, used or not
        canonical = ("y", "v") if f.kind == "loss" else ("x",)
        env = {p: E.Name(c) for p, c in zip(f.params, canonical, strict=True)}
        env.update({p: E.Name(p) for p in f.extra})
        body = _Inliner(scope, f"{f.kind} {f.name!r}").resolve(f.body, env, (f.name,))
        _check_levels(body, f"{f.kind} {f.name!r}", has_sum_level=f.kind == "loss")
    if len(module.memories) != 1:
        where = module.memories[1].span if len(module.memories) > 1 else Span(module.file, 1, 1)
        raise SpecTypeError(
            f"a spec file holds exactly one memory block, found {len(module.memories)}",
            where,
            hint=None if module.memories else "add `memory Name { ... }`",
        )
    return _MemoryChecker(module.memories[0], scope, module.file).run()


def load(data: bytes | str, file: str = "<spec>") -> Spec:
    """Parse and check spec text: the front end in one call."""
    try:
        return check(parse(data, file))
    except MirascError:
        raise
    except RecursionError:
        raise SpecLimitError("spec is too deeply nested to check") from None
