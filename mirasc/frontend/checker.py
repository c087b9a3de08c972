"""Syntax tree to Spec: the memory's settings checked (architecture, bias, retention,
algorithm, chunk, clip, gates): arities, parameter ranges and kinds, with every expression
resolved and inlined by `names`. All failures are located `MirascError`s."""

from __future__ import annotations

from ..errors import MirascError, Span, SpecLimitError, SpecNameError, SpecTypeError, did_you_mean
from ..ir import expr as E
from ..ir.spec import (
    Activation,
    Algorithm,
    Architecture,
    Bias,
    ConstVal,
    Gate,
    GateRef,
    Retention,
    Spec,
    snake_case,
)
from . import syntax
from .gate_init import check_reachable
from .names import Inliner, Scope, check_identifier, check_levels, check_params_used
from .parser import parse

SETTINGS = ("architecture", "bias", "retention", "algorithm", "chunk", "clip")
RETENTIONS = ("none", "decay", "l2", "lq", "kl")
ALGORITHMS = ("gd", "momentum")
PARAM_RULES = {  # prelude loss parameter -> (test, what it must be)
    ("lp", "p"): (lambda x: x >= 1, "p >= 1 (l_p with p < 1 is not a norm and its gradient diverges at 0)"),
    ("huber", "delta"): (lambda x: x > 0, "delta > 0"),
    ("yaad", "delta"): (lambda x: x > 0, "delta > 0"),
}  # fmt: skip


class _MemoryChecker:
    def __init__(self, mem: syntax.MemoryDecl, scope: Scope, file: str):
        self.mem = mem
        self.scope = scope
        self.file = file
        self.settings: dict[str, syntax.Setting] = {}
        self.bias_formula: syntax.FunctionDef | None = None
        self.gates: dict[str, syntax.GateDecl] = {}
        self.consts: dict[str, syntax.ConstDecl] = {}
        self.used: set[str] = set()

    def run(self) -> Spec:
        mem = self.mem
        check_identifier(mem.name, mem.span, "memory", snake_case(mem.name))
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
                hint="momentum takes none or decay(alpha) retention (Titans eqs. 13-14); see docs/semantics.md §2.5",
            )
        chunk = self.integer("chunk", 1, 1, 4096)
        clip = self.positive("clip")
        gates = self.check_gates()
        return Spec(mem.name, arch, bias, retention, algorithm, chunk, clip, gates, self.file)

    # ---- members -------------------------------------------------------------------------
    def collect(self, m) -> None:
        if isinstance(m, syntax.Setting):
            if m.name not in SETTINGS:
                raise SpecNameError(
                    f"unknown setting {m.name!r}", m.span, hint=did_you_mean(m.name, SETTINGS)
                )
            if m.name in self.settings:
                raise SpecNameError(f"setting {m.name!r} is given twice", m.span)
            self.settings[m.name] = m
        elif isinstance(m, syntax.FunctionDef):
            if self.bias_formula is not None:
                raise SpecNameError("bias is given twice", m.span)
            self.bias_formula = m
        else:
            table = self.gates if isinstance(m, syntax.GateDecl) else self.consts
            kind = "gate" if isinstance(m, syntax.GateDecl) else "const"
            check_identifier(m.name, m.span, kind)
            if m.name in self.gates or m.name in self.consts:
                raise SpecNameError(f"{m.name!r} is declared twice", m.span)
            table[m.name] = m

    def operand(self, value, what: str):
        """A gate name, a const name or a number."""
        if isinstance(value, syntax.NumberValue):
            return ConstVal(value.value)
        if isinstance(value, syntax.RefValue):
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
        if isinstance(value, syntax.RefValue):
            value = syntax.Configured(value.name, (), (), value.span)
        if not isinstance(value, syntax.Configured):
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
        if isinstance(value, syntax.RefValue) and value.name in self.consts:
            self.used.add(value.name)
            value = syntax.NumberValue(self.consts[value.name].value, value.span)
        if not isinstance(value, syntax.NumberValue):
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
        if not isinstance(value, syntax.BoolValue):
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
        kind = value.name if isinstance(value, (syntax.RefValue, syntax.Configured)) else None
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
            if not isinstance(nv, syntax.RefValue) or nv.name not in ("layernorm", "none"):
                raise SpecTypeError("norm must be layernorm or none", nv.span)
            norm = None if nv.name == "none" else "layernorm"
        if kind == "linear":
            return Architecture(1, 1, None, residual, norm)
        depth = self.number(a["depth"], "depth", 1, 8, integer=True) if "depth" in a else 2
        expansion = (
            self.number(a["expansion"], "expansion", 1, 16, integer=True) if "expansion" in a else 4
        )
        act_value = a.get("activation", syntax.RefValue("gelu", value.span))
        return Architecture(depth, expansion, self.activation(act_value), residual, norm)

    def activation(self, value) -> Activation:
        if not isinstance(value, syntax.RefValue):
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
        body = Inliner(self.scope, f"activation {value.name!r}").resolve(
            fdef.body, {fdef.params[0]: E.Name("x")}, (value.name,)
        )
        check_levels(body, f"activation {value.name!r}", has_sum_level=False)
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
            check_params_used(f, self.scope)
            env[f.params[0]], env[f.params[1]] = y, v
            body = Inliner(self.scope, "bias").resolve(f.body, env, ())
            check_levels(body, "the bias", has_sum_level=True)
            return Bias("custom", body)
        value = self.settings["bias"].value
        name = value.name if isinstance(value, (syntax.RefValue, syntax.Configured)) else None
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
        body = Inliner(self.scope, f"loss {name!r}").resolve(fdef.body, env, (name,))
        check_levels(body, f"loss {name!r}", has_sum_level=True)
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
        kind = value.name if isinstance(value, (syntax.RefValue, syntax.Configured)) else None
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
        a = self.args(value, "retention", ("keep", "centred"), ("keep",))
        centred = self.flag(a["centred"], "centred") if "centred" in a else False
        return Retention("kl", self.operand(a["keep"], "kl(keep)"), centred=centred)

    def algorithm(self, value) -> Algorithm:
        kind = value.name if isinstance(value, (syntax.RefValue, syntax.Configured)) else None
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
            body = Inliner(self.scope, f"gate {name!r}").resolve(g.body, env, ())
            check_levels(body, f"gate {name!r}", has_sum_level=False)
            if not any(isinstance(n, E.Name) and n.id == "z" for n in E.walk(body)):
                raise SpecTypeError(
                    f"gate {name!r} does not depend on its pre-activation z",
                    g.span,
                    hint=f"a fixed value is a const: `const {name} = ...`",
                )
            self.used.update(n.id for n in E.walk(g.body) if isinstance(n, E.Name))
            if g.init is not None:
                check_reachable(name, body, g.init, g.span)
            gates.append(Gate(name, body, g.init))
        for name, c in self.consts.items():
            if name not in self.used:
                raise SpecNameError(f"const {name!r} is declared but never used", c.span)
        return tuple(gates)


def check(module: syntax.Module) -> Spec:
    """The one memory of a parsed file, checked and resolved."""
    scope = Scope(module)
    for f in module.functions:  # check every definition, used or not
        canonical = ("y", "v") if f.kind == "loss" else ("x",)
        env = {p: E.Name(c) for p, c in zip(f.params, canonical, strict=True)}
        env.update({p: E.Name(p) for p in f.extra})
        body = Inliner(scope, f"{f.kind} {f.name!r}").resolve(f.body, env, (f.name,))
        check_levels(body, f"{f.kind} {f.name!r}", has_sum_level=f.kind == "loss")
        check_params_used(f, scope)
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
