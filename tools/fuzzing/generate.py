"""Random .miras text for the fuzz harness: a generator that follows the grammar (so most
inputs reach the checker and many the full build) and a mutator over real specs (so the
front end also sees near-misses). Every input is a function of one integer seed."""

from __future__ import annotations

import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNARY = ("exp", "log", "sqrt", "abs", "sign", "sigmoid", "tanh", "cosh", "sinh", "erf", "softplus")
CMPS = ("<", "<=", ">", ">=", "==", "!=")
NUMBERS = ("0", "1", "2", "0.5", "0.1", "3", "1e-6", "1e30", "64", "65", "4096", "1e-30", ".5")
ODD_NAMES = (  # names that have broken generated code before: keywords, built-ins, generated names
    "Class", "If", "Read", "Runtime", "TorchBackend", "anchor_state", "chunk_offset", "len",
    "torch_backend", "Ops", "Layer", "match", "gates", "Mirasc", "M" * 80, "reason", "float",
)  # fmt: skip
GATE_NAMES = ("alpha", "beta", "eta", "theta", "lam", "keep", "d", "g1", "rate")


class ExprGen:
    """Expressions over `names`, with calls to the user definitions in `defs` (name -> arity
    of extra parameters), sized by `budget` nodes."""

    def __init__(self, rng: random.Random, names: list[str], defs: dict | None = None):
        self.rng, self.names, self.defs = rng, names, defs or {}

    def leaf(self) -> str:
        r = self.rng
        if self.names and r.random() < 0.65:
            return r.choice(self.names)
        return r.choice(NUMBERS)

    def expr(self, depth: int) -> str:
        r = self.rng
        if depth <= 0 or r.random() < 0.25:
            return self.leaf()
        kind = r.random()
        sub = lambda: self.expr(depth - 1)  # noqa: E731
        if kind < 0.35:
            op = r.choice("+-*/^" if r.random() < 0.8 else "^")
            right = r.choice(NUMBERS[:6]) if op == "^" and r.random() < 0.7 else sub()
            return f"({sub()} {op} {right})"
        if kind < 0.6:
            return f"{r.choice(UNARY)}({sub()})"
        if kind < 0.68:
            return f"{r.choice(('min', 'max'))}({sub()}, {sub()})"
        if kind < 0.76:
            arms = ", ".join(
                f"{sub()} {r.choice(CMPS)} {sub()}: {sub()}" for _ in range(r.randint(1, 2))
            )
            return f"piecewise({arms}, otherwise: {sub()})"
        if kind < 0.82:
            return f"-{sub()}"
        if self.defs and kind < 0.95:
            name = r.choice(sorted(self.defs))
            extra = ", ".join(self.leaf() for _ in range(self.defs[name]))
            return f"{name}({sub()}{'; ' + extra if extra else ''})"
        return f"({sub()})"


def mentioning(rng: random.Random, gen: ExprGen, depth: int, name: str) -> str:
    """An expression that mentions `name` (most inputs should get past the checker)."""
    for _ in range(4):
        e = gen.expr(depth)
        if re.search(rf"\b{name}\b", e):
            return e
    return f"({e}) * {name}" if rng.random() < 0.5 else f"{e} + {name}"


def _loss_body(rng: random.Random, params: list[str], depth: int) -> str:
    """g(S_1..S_m) with S_i = sum(phi_i(y, v, params))."""
    inner = ExprGen(rng, ["y", "v", "y", "(y - v)", *params])
    sums = [f"sum({mentioning(rng, inner, depth, 'y')})" for _ in range(rng.randint(1, 3))]
    outer = ExprGen(rng, [*sums, *params])
    body = " + ".join(sums) if rng.random() < 0.4 else mentioning(rng, outer, 2, "sum")
    for p in params:
        body = body if re.search(rf"\b{p}\b", body) else f"{p} * ({body})"
    return body


def _operand(rng: random.Random, gates: list[str], consts: dict) -> str:
    roll = rng.random()
    if roll < 0.6:
        name = rng.choice(GATE_NAMES if rng.random() < 0.97 else ODD_NAMES)
        if name not in gates:
            gates.append(name)
        return name
    if roll < 0.75 and consts:
        return rng.choice(sorted(consts))
    return rng.choice(("0.1", "0.5", "1", "0", "2", "1e-3"))


def _architecture(rng: random.Random, acts: list[str]) -> str:
    if rng.random() < 0.5:
        return "linear" + rng.choice(("", "(residual: true)", "(norm: layernorm)"))
    opts = []
    if rng.random() < 0.6:
        opts.append(f"depth: {rng.choice((1, 2, 2, 3, 3, 9) if rng.random() < 0.1 else (1, 2, 3))}")
    if rng.random() < 0.3:
        opts.append(f"expansion: {rng.choice((1, 2, 4))}")
    if rng.random() < 0.8:
        opts.append(f"activation: {rng.choice([*acts, 'silu', 'gelu', 'relu', 'tanh'])}")
    if rng.random() < 0.3:
        opts.append("residual: true")
    if rng.random() < 0.3:
        opts.append("norm: layernorm")
    return f"mlp({', '.join(opts)})"


def _retention(rng: random.Random, gates: list[str], consts: dict, momentum: bool) -> str:
    kinds = (
        ("none", "decay")
        if momentum and rng.random() < 0.9
        else ("none", "decay", "l2", "lq", "kl")
    )
    kind = rng.choice(kinds)
    op = lambda: _operand(rng, gates, consts)  # noqa: E731
    if kind == "decay":
        first = rng.random() < (0.02 if momentum else 0.3)
        return f"decay({op()}{', first: true' if first else ''})"
    if kind == "l2":
        return f"l2({op()})"
    if kind == "lq":
        q = rng.choice(("0.5", "17") if rng.random() < 0.05 else ("1.5", "3", "2", "4"))
        return f"lq(q: {q}, keep: {op()})"
    return f"kl(keep: {op()})" if kind == "kl" else "none"


def stress(rng: random.Random, var: str) -> tuple[list[str], str]:
    """(definitions, expression in `var`) that are costly rather than wrong: chains of calls
    that multiply depth, long sums, folded exponents, piecewise nested through definitions."""
    roll = rng.random()
    if roll < 0.3:  # definitions composed k times per level
        k, levels = rng.randint(2, 10), rng.randint(1, 3)
        defs = [f"activation s0(x) = {'sigmoid(' * k}x{')' * k}"]
        defs += [f"activation s{i}(x) = {f's{i - 1}(' * k}x{')' * k}" for i in range(1, levels)]
        return defs, f"s{levels - 1}({var})"
    if roll < 0.5:
        funcs = rng.sample(UNARY, 4)
        e = var
        for i in range(rng.randint(10, 45)):
            e = f"{funcs[i % 4]}({e})"
        return [], e
    if roll < 0.7:
        return [], f"sigmoid({var} + {' + '.join(str(i) for i in range(rng.randint(20, 110)))})"
    if roll < 0.85:
        a, b = rng.choice(NUMBERS), rng.choice(NUMBERS)
        return [], f"({var} * 0.1)^({a}^{b})"
    levels = rng.randint(2, 7)
    defs = ["activation w0(x) = x"] + [
        f"activation w{i}(x) = piecewise(w{i - 1}(x) < 1: w{i - 1}(x) * 2, otherwise: w{i - 1}(x))"
        for i in range(1, levels + 1)
    ]
    return defs, f"abs({var})^w{levels}({var})"


def generate_stressed(seed: int) -> str:
    """A valid small spec with one costly expression as its gate, bias or activation."""
    rng = random.Random(seed)
    where = rng.choice(("gate", "bias", "activation"))
    defs, e = stress(rng, {"gate": "z", "bias": "y", "activation": "x"}[where])
    arch, bias, gate = "linear", "bias = l2", "sigmoid(z)"
    if where == "gate":
        gate = e
    elif where == "bias":
        bias = f"bias(y, v) = sum(({e}) * (y - v))"
    else:
        defs.append(f"activation stressed(x) = {e}")
        arch = "mlp(activation: stressed)"
    body = [f"    architecture = {arch}", f"    {bias}", "    retention = none",
            "    algorithm = gd(lr: eta)", f"    gate eta = {gate}"]  # fmt: skip
    return "\n".join([*defs, f"memory Stress{seed % 100} {{", *body, "}"]) + "\n"


def generate(seed: int) -> str:
    """A spec that follows the grammar: definitions, then one memory with every setting."""
    rng = random.Random(seed)
    depth = rng.choice((1, 2, 3, 3, 4, 5))
    lines, acts, losses = [], [], {}
    for i in range(rng.randint(0, 2)):  # activations, each may call the previous ones
        name = f"act{i}"
        body = ExprGen(rng, ["x"], {a: 0 for a in acts}).expr(depth)
        lines.append(f"activation {name}(x) = {body}")
        acts.append(name)
    if rng.random() < 0.4:
        extra = ["d"] if rng.random() < 0.5 else []
        body = _loss_body(rng, extra, depth)
        lines.append(f"loss mine(y, v{'; d' if extra else ''}) = {body}")
        losses["mine"] = extra
    gates: list[str] = []
    consts = {f"c{i}": rng.choice(NUMBERS) for i in range(rng.randint(0, 2))}
    roll = rng.random()
    if roll < 0.35:
        bias = f"bias(y, v) = {_loss_body(rng, [], depth)}"
    elif roll < 0.55 and losses:
        args = ", ".join(f"{p}: {_operand(rng, gates, consts)}" for p in losses["mine"])
        bias = f"bias = mine({args})" if args else "bias = mine"
    else:
        bias = "bias = " + rng.choice(
            (
                "l2",
                "dot",
                "lp(p: 3)",
                "lp(p: 1.5)",
                "huber(delta: 1)",
                "yaad(delta: 2)",
                "huber(delta: g1)",
            )
        )
        gates += ["g1"] if "g1)" in bias else []
    name = rng.choice(ODD_NAMES) if rng.random() < 0.03 else f"Mem{seed % 1000}"
    momentum = rng.random() < 0.3
    if momentum:
        algo = f"momentum(lr: {_operand(rng, gates, consts)}, momentum: {_operand(rng, gates, consts)})"
    else:
        algo = f"gd(lr: {_operand(rng, gates, consts)})"
    body = [
        f"    architecture = {_architecture(rng, acts)}",
        f"    {bias}",
        f"    retention = {_retention(rng, gates, consts, momentum)}",
        f"    algorithm = {algo}",
    ]
    if rng.random() < 0.4:
        rare = rng.random() < 0.05
        body.append(f"    chunk = {rng.choice((0, 5000) if rare else (1, 2, 4, 16))}")
    if rng.random() < 0.2:
        body.append(
            f"    clip = {rng.choice(('0', '1e13') if rng.random() < 0.1 else ('1', '0.5'))}"
        )
    zgen = ExprGen(rng, ["z", "z", *consts])
    gate_lines = [
        f"    gate {g} = {mentioning(rng, zgen, depth, 'z') if rng.random() < 0.6 else 'sigmoid(z)'}"
        for g in gates
    ]
    used = "\n".join([*lines, *body, *gate_lines])
    body += [
        f"    const {c} = {v}"
        for c, v in consts.items()
        if re.search(rf"\b{c}\b", used) or rng.random() < 0.05
    ]
    return "\n".join([*lines, f"memory {name} {{", *body, *gate_lines, "}"]) + "\n"


TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\S")
JUNK = (
    "(",
    ")",
    ",",
    ";",
    ":",
    "^",
    "{",
    "}",
    "=",
    "-",
    "#",
    "\u00e9",
    "\x00",
    "\ud800",
    "\t",
    "\n",
)


def shipped_specs() -> list[str]:
    """The texts of specs/*.miras: the mutator's seeds."""
    return [p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.miras"))]


def mutate(seed: int, corpus: list[str]) -> str:
    """A shipped (or generated) spec with a few token-level edits."""
    rng = random.Random(seed)
    text = rng.choice(corpus) if rng.random() < 0.7 else generate(seed ^ 0x5EED)
    spans = [m.span() for m in TOKEN.finditer(text)]
    for _ in range(rng.randint(1, 4)):
        if not spans:
            break
        a, b = rng.choice(spans)
        text = text[:a] + _replacement(rng, text[a:b]) + text[b:]
        spans = [m.span() for m in TOKEN.finditer(text)]
    return text


def _replacement(rng: random.Random, token: str) -> str:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(NUMBERS)
    if roll < 0.35:
        return rng.choice((*GATE_NAMES, *ODD_NAMES, *UNARY, "z", "x", "y", "v", "sum"))
    if roll < 0.5:
        return ""
    if roll < 0.6:
        return token + " " + token
    if roll < 0.75:
        return f"{rng.choice(UNARY)}({token})"
    if roll < 0.85:
        return ExprGen(rng, ["z", "x", "y", "v", token]).expr(3)
    return rng.choice(JUNK)


def make_input(seed: int, corpus: list[str]) -> tuple[str, str]:
    """(kind, text) for one seed: half mutated, one in forty stressed, the rest generated."""
    if seed % 2:
        return "mutated", mutate(seed, corpus)
    if seed % 40 == 2:
        return "stressed", generate_stressed(seed)
    return "generated", generate(seed)
