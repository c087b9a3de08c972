"""Name resolution for the front end: the names a spec may use and define, the prelude, and the
inliner that binds parameters and expands every user and prelude definition into one expression.
Failures are located `MirascError`s."""

from __future__ import annotations

import builtins
import dataclasses
import keyword
from functools import lru_cache
from importlib import resources

from ..errors import Span, SpecLimitError, SpecNameError, SpecTypeError, did_you_mean
from ..ir import expr as E
from . import syntax
from .parser import parse

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

# Names a generated package binds where a memory's Python name or a gate's name also lives:
# the package's files, the globals of ops.py, __init__.py and elementwise.py, and the op's
# parameters and locals (a gate is an op parameter and a `bias_grad` parameter). One list;
# tests/test_robustness.py reads every generated package and fails on a name missing here.
GENERATED_NAMES = frozenset({
    "ops", "layer", "elementwise", "torch_backend", "triton_backend",
    "runtime", "torch", "SPEC", "SPEC_IR", "STATE_NAMES", "GATE_NAMES", "HAS_TRITON", "op", "read",
    "Layer", "bias_grad", "bias_vjp", "act", "act_grad", "act_grad2", "options",
    "q", "k", "v", "y", "scale", "initial_state", "output_final_state", "backend", "anchor_state",
    "chunk_offset", "ln_weight", "ln_bias", "gates", "requested", "reason", "state",
})  # fmt: skip
PYTHON_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_"))

MAX_EXPR_NODES = 4000  # after inlining: bounds SymPy's work on the expression
# after inlining: SymPy, the printers and `unparse` recurse once (SymPy several frames) per
# level, so a bound far below Python's recursion limit keeps every stage recursion-safe. A call
# or a piecewise counts two levels, as in the parse tree (`parser.MAX_DEPTH`), so that the
# normalised text, which writes every definition inlined, parses again (fuzz-found: 64 nested
# sigmoids through two definitions loaded, and their normalised text did not)
MAX_EXPR_DEPTH = 100
MAX_EXPONENT = 64.0  # exponents beyond this (literal or folded) only overflow or unroll
MAX_NAME_LENGTH = 64  # a memory's name names a folder (file names stop at 255 bytes)


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be a Python identifier in generated code, or None."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in ("None", "True", "False"):
        return "is a Python keyword"
    if name.startswith("_"):
        return "starts with '_', which is reserved for generated code"
    if name in RESERVED or name in GENERATED_NAMES:
        return "is reserved (generated code uses it)"
    if name in PYTHON_NAMES:
        return "is a Python built-in, which generated code may use"
    return None


def check_identifier(name: str, span: Span, what: str, python_name: str | None = None) -> None:
    """Names become Python identifiers in generated code: keep them safe and unambiguous.
    `python_name` is how generated code spells the name when it differs (a memory's
    snake_case function and package name): it obeys the same rules."""
    if len(name) > MAX_NAME_LENGTH:
        raise SpecLimitError(
            f"{what} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}", span
        )
    problem = _name_problem(name)
    if problem:
        raise SpecNameError(f"{what} name {name!r} {problem}", span)
    problem = _name_problem(python_name) if python_name not in (None, name) else None
    if problem:
        raise SpecNameError(
            f"{what} name {name!r} becomes the Python name {python_name!r}, which {problem}",
            span,
        )


@lru_cache(maxsize=1)
def prelude() -> syntax.Module:
    text = resources.files("mirasc.frontend").joinpath("prelude.miras").read_text(encoding="utf-8")
    return parse(text, "<prelude>")


class Scope:
    """Definitions visible to a spec: the prelude, overridden by the file's own definitions."""

    def __init__(self, module: syntax.Module):
        self.defs: dict[str, syntax.FunctionDef] = {f.name: f for f in prelude().functions}
        seen: dict[str, syntax.FunctionDef] = {}
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


class Inliner:
    """Resolves an expression: binds parameters, inlines definitions, rejects unknown names."""

    def __init__(self, scope: Scope, context: str, measures: dict | None = None, outer=None):
        self.scope = scope
        self.context = context
        self.outer = outer or context  # the construct being resolved, for limit messages
        # id(node) -> (node, size, depth) of every node built so far, shared with the inliners
        # of called definitions, so that limiting each new node costs O(its children)
        self.measures = {} if measures is None else measures

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
            return self._limit(E.Neg(self.resolve(node.operand, env, stack), node.span))
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

    def _measure(self, node) -> tuple[int, int]:
        """Size and depth of a resolved node: from the table, or counted (leaves, env values)."""
        hit = self.measures.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1], hit[2]
        return E.size(node), E.depth(node)

    def _where(self) -> str:
        if self.outer == self.context:
            return self.outer
        return f"{self.outer} (here, inside {self.context})"

    def _limit(self, node):
        """The node, measured: size and depth after inlining are what SymPy, the printers and
        every recursive stage pay for, so both are bounded here, where they grow."""
        size, depth = 1, 1
        step = 2 if isinstance(node, (E.Call, E.Piecewise)) else 1  # as the parser counts
        for child in E.children(node):
            s, d = self._measure(child)
            size, depth = size + s, max(depth, d + step)
        self.measures[id(node)] = (node, size, depth)
        if size > MAX_EXPR_NODES:
            raise SpecLimitError(
                f"{self._where()} grows past {MAX_EXPR_NODES} nodes once definitions are inlined",
                node.span,
            )
        if depth > MAX_EXPR_DEPTH:
            raise SpecLimitError(
                f"{self._where()} nests more than {MAX_EXPR_DEPTH} levels deep once definitions "
                "are inlined",
                node.span,
                hint="compose fewer definitions, or split a long chain of + or * with parentheses",
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
        inner = Inliner(self.scope, f"{fdef.kind} {name!r}", self.measures, self.outer)
        return inner.resolve(fdef.body, inner_env, (*stack, name))


def check_params_used(fdef: syntax.FunctionDef, scope: Scope) -> None:
    """Every parameter after ';' reaches the inlined formula: a gate passed to a parameter the
    formula drops would be declared, passed and never read (and the normalised text, which
    lists the gates the formula reads, would not reload)."""
    env = {p: E.Name(p) for p in fdef.params + fdef.extra}
    body = Inliner(scope, f"{fdef.kind} {fdef.name!r}").resolve(fdef.body, env, (fdef.name,))
    used = {n.id for n in E.walk(body) if isinstance(n, E.Name)}
    for p in fdef.extra:
        if p not in used:
            raise SpecNameError(
                f"parameter {p!r} of {fdef.kind} {fdef.name!r} is never used", fdef.span
            )


def check_levels(body, context: str, has_sum_level: bool) -> None:
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
