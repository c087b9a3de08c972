"""The oracle: the update semantics of docs/semantics.md §2 applied literally, token by token, in float64.

It evaluates the spec's expression trees directly as torch operations, takes every surprise
`g_t` from `torch.autograd.grad`, materialises every state `W_t` and reads after the write.
It shares no code with the symbolic derivation, the printers or the templates: agreement
between it and a backend therefore means something. It is slow on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BackendError
from ..ir import expr as E
from ..ir.spec import ConstVal, GateRef, Spec

LN_EPS = 1e-5  # the memory's LayerNorm epsilon (docs/semantics.md §2.2)

_FUNCTIONS = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sign": torch.sign,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "cosh": torch.cosh,
    "sinh": torch.sinh,
    "erf": torch.special.erf,
    "softplus": F.softplus,
    "min": torch.minimum,
    "max": torch.maximum,
}

_COMPARE = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}


def evaluate(node, env: dict, like: torch.Tensor) -> torch.Tensor:
    """Value of a checked expression; `sum` reduces over the last dimension (the values) of
    `like`, the tensor that sets dtype, device and shape."""

    def ev(n):
        if isinstance(n, E.Num):
            return torch.tensor(n.value, dtype=like.dtype, device=like.device)
        if isinstance(n, E.Name):
            return env[n.id]
        if isinstance(n, E.Neg):
            return -ev(n.operand)
        if isinstance(n, E.Binary):
            a, b = ev(n.left), ev(n.right)
            if n.op == "+":
                return a + b
            if n.op == "-":
                return a - b
            if n.op == "*":
                return a * b
            if n.op == "/":
                return a / b
            return torch.pow(a, b)
        if isinstance(n, E.Piecewise):
            out = ev(n.otherwise)
            for c in reversed(n.cases):
                out = torch.where(_COMPARE[c.cmp](ev(c.left), ev(c.right)), ev(c.value), out)
            return out
        if n.fn == "sum":  # over the value dimension: a constant term counts Dv times
            return torch.broadcast_to(ev(n.args[0]), like.shape).sum(-1, keepdim=True)
        return _FUNCTIONS[n.fn](*(ev(a) for a in n.args))

    return ev(node)


def _memory(spec: Spec, weights: list, x: torch.Tensor, ln) -> torch.Tensor:
    """f(W; x) for x [B, H, Dk]: the architecture of docs/semantics.md §2.2, written out plainly."""
    arch = spec.architecture
    if spec.retention.centred:  # kl's centred read: out * W - 1, zero at a uniform row
        weights = [w.shape[-1] * w - 1.0 for w in weights]
    h = x.unsqueeze(-2)
    for i, w in enumerate(weights):
        h = h @ w
        if i < len(weights) - 1:
            h = evaluate(arch.activation.body, {"x": h}, h)
    m = h.squeeze(-2)
    if arch.norm == "layernorm":
        mu = m.mean(-1, keepdim=True)
        var = ((m - mu) ** 2).mean(-1, keepdim=True)
        m = (m - mu) / torch.sqrt(var + LN_EPS) * ln[0] + ln[1]
    return x + m if arch.residual else m


def _operand(op, gates: dict, t: int) -> torch.Tensor | float:
    if op is None:
        return 0.0
    if isinstance(op, ConstVal):
        return op.value
    assert isinstance(op, GateRef)
    return gates[op.name][:, t].unsqueeze(-1).unsqueeze(-1)  # [B, H, 1, 1]


def _layer_norm_params(spec: Spec, H: int, Dv: int, ln_weight, ln_bias):
    """The memory LayerNorm's per-head gain and bias [1, H, Dv] (default 1 and 0), or None."""
    if spec.architecture.norm != "layernorm":
        return None
    f64 = torch.float64
    gain = torch.ones(H, Dv, dtype=f64) if ln_weight is None else ln_weight.to(f64)
    shift = torch.zeros(H, Dv, dtype=f64) if ln_bias is None else ln_bias.to(f64)
    return gain.unsqueeze(0), shift.unsqueeze(0)


def _lq_normaliser(a: torch.Tensor, q: float) -> torch.Tensor:
    """||A||_q^(q-2) over each matrix; a zero matrix maps to W = 0 (divide by one). Decided on
    the sum: for q < 2 the norm's power of a zero sum is inf, not 0."""
    total = a.abs().pow(q).sum((-2, -1), keepdim=True)
    positive = total > 0
    return torch.where(positive, torch.where(positive, total, 1.0).pow((q - 2.0) / q), 1.0)


def _starting_state(spec: Spec, initial_state, B: int, H: int, Dk: int, Dv: int):
    """(weights, momentum buffers) in float64; zeros where the memory allows a default."""
    f64, depth = torch.float64, spec.architecture.depth
    if initial_state is None:
        if spec.needs_initial_state:
            raise BackendError(f"{spec.name} needs an initial_state (MLP or kl memory)")
        weights = [torch.zeros(B, H, Dk, Dv, dtype=f64)]
        return weights, [torch.zeros_like(weights[0])] if spec.has_momentum else []
    weights = [s.to(f64) for s in initial_state[:depth]]
    moms = [s.to(f64) for s in initial_state[depth:]]
    if spec.has_momentum and not moms:
        moms = [torch.zeros_like(w) for w in weights]
    return weights, moms


def _anchor_of_continued_chunk(spec: Spec, anchor_state, chunk_offset: int, like_shape):
    """The weights a call continuing a chunk takes its first gradients at (None: no chunk in
    progress; a missing anchor is the default zeros where the memory allows them)."""
    C = spec.chunk
    if not 0 <= chunk_offset < C:
        raise BackendError(f"chunk_offset must be in [0, {C}), got {chunk_offset}")
    if not chunk_offset:
        return None
    if anchor_state is None:
        if spec.needs_initial_state:
            raise BackendError("chunk_offset > 0 needs the chunk's anchor_state")
        return [torch.zeros(like_shape, dtype=torch.float64)]
    return [s.to(torch.float64) for s in anchor_state[: spec.architecture.depth]]


def _surprise(spec: Spec, anchor: list, k_t, v_t, gates_t: dict, rate, ln) -> list:
    """grad_W loss(f(W; k_t), v_t) at the anchor (retained by 1 - rate under `first`), by
    autograd through the loss as the spec writes it; soft-clamped when the spec clips."""
    at = [w * (1.0 - rate) for w in anchor] if spec.retention.first else anchor
    at = [w if w.requires_grad else w.detach().requires_grad_(True) for w in at]
    y = _memory(spec, at, k_t, ln)
    loss = evaluate(spec.bias.body, {"y": y, "v": v_t, **gates_t}, y)
    grads = torch.autograd.grad(loss.sum(), at, create_graph=True)
    if spec.clip is None:
        return list(grads)
    c = spec.clip
    norm = torch.sqrt(sum((g * g).sum((-2, -1), keepdim=True) for g in grads))
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    factor = torch.where(norm > 0, c * torch.tanh(safe / c) / safe, torch.ones_like(norm))
    return [g * factor for g in grads]


def _step(spec: Spec, weights: list, moms: list, grads: list, lr, rate, beta):
    """One token's update: the table of docs/semantics.md §2.5."""
    kind = spec.retention.kind
    pairs = lambda a: zip(a, grads, strict=True)  # noqa: E731
    if spec.algorithm.kind == "momentum":
        moms = [beta * s - lr * g for s, g in pairs(moms)]
        return [(1.0 - rate) * w + s for w, s in zip(weights, moms, strict=True)], moms
    if kind in ("none", "decay"):
        return [(1.0 - rate) * w - lr * g for w, g in pairs(weights)], moms
    if kind == "l2":
        return [(w - lr * g) / (1.0 + lr * rate) for w, g in pairs(weights)], moms
    if kind == "kl":  # the mirror step, on every token
        return [
            torch.softmax(rate * torch.log(w) - lr * g, dim=-1) for w, g in pairs(weights)
        ], moms
    return [rate * w - lr * g for w, g in pairs(weights)], moms  # lq


def run(
    spec: Spec,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: dict,
    scale: float = 1.0,
    initial_state=None,
    ln_weight=None,
    ln_bias=None,
    output_final_state: bool = False,
    anchor_state=None,
    chunk_offset: int = 0,
):
    """The memory op by definition; same signature and results as a generated op's.

    With `chunk_offset` > 0 the call continues a chunk already that many tokens in: its first
    `chunk - chunk_offset` tokens take their gradients at `anchor_state`."""
    B, T, H, Dk = q.shape
    Dv, dtype, f64 = v.shape[-1], q.dtype, torch.float64
    q, k, v = q.to(f64), k.to(f64), v.to(f64)
    gates = {name: g.to(f64) for name, g in gates.items()}
    ln = _layer_norm_params(spec, H, Dv, ln_weight, ln_bias)
    weights, moms = _starting_state(spec, initial_state, B, H, Dk, Dv)
    continued = _anchor_of_continued_chunk(spec, anchor_state, chunk_offset, (B, H, Dk, Dv))
    ret, alg = spec.retention, spec.algorithm
    lq = ret.kind == "lq"
    normalised = lambda ws, norms: [w / n for w, n in zip(ws, norms, strict=True)]  # noqa: E731
    outputs = []
    for start, stop, continuing, complete in _chunks(T, spec.chunk, chunk_offset):
        base = continued if continuing else weights
        anchor_norms = [_lq_normaliser(a, ret.q) for a in base] if lq else None
        anchor = normalised(base, anchor_norms) if lq else base
        for t in range(start, stop):
            lr, rate = _operand(alg.lr, gates, t), _operand(ret.gate, gates, t)
            gates_t = {n: g[:, t].unsqueeze(-1) for n, g in gates.items()}
            grads = _surprise(spec, anchor, k[:, t], v[:, t], gates_t, rate, ln)
            beta = _operand(alg.momentum, gates, t)
            weights, moms = _step(spec, weights, moms, grads, lr, rate, beta)
            now = weights
            if lq:  # a complete chunk's last token reads the exactly normalised state
                last = complete and t == stop - 1
                norms = [_lq_normaliser(a, ret.q) for a in weights] if last else anchor_norms
                now = normalised(weights, norms)
            outputs.append(_memory(spec, now, scale * q[:, t], ln))
    o = torch.stack(outputs, dim=1).to(dtype) if outputs else q.new_zeros(B, 0, H, Dv)
    return o, tuple(weights + moms) if output_final_state else None


def _chunks(T: int, chunk: int, offset: int):
    """(start, stop, continuing, complete) per chunk; the first finishes a chunk `offset` in."""
    start, size = 0, chunk - offset
    while start < T:
        stop = min(start + size, T)
        yield start, stop, start == 0 and offset > 0, stop - start == size
        start, size = stop, chunk


def read(spec: Spec, q: torch.Tensor, state, scale: float = 1.0, ln_weight=None, ln_bias=None):
    """f(W; scale * q) at a fixed state (MONETA's A normalised), every token: the oracle of a
    generated package's `read`."""
    T, H = q.shape[1], q.shape[2]
    f64 = torch.float64
    weights = [s.to(f64) for s in state[: spec.architecture.depth]]
    if spec.retention.kind == "lq":
        weights = [a / _lq_normaliser(a, spec.retention.q) for a in weights]
    ln = _layer_norm_params(spec, H, weights[-1].shape[-1], ln_weight, ln_bias)
    outs = [_memory(spec, weights, scale * q[:, t].to(f64), ln) for t in range(T)]
    return torch.stack(outs, dim=1).to(q.dtype)
