"""Hold a compiled spec against the autograd oracle: random inputs, and relative errors of the
outputs, final states and every input gradient. Used by `mirasc check`, by mirasc's own
property tests, and available to a user's pytest suite."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..ir.spec import GateRef, Spec, from_data

# Below these norms a tensor counts as zero and the error is absolute: a gradient that is zero
# in exact arithmetic comes out as rounding noise (~1e-17 in fp64), which is no relative error.
# The coarser the dtype, the larger its noise and its floor; an unlisted dtype gets the coarsest.
ABS_FLOOR = {torch.float64: 1e-4, torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@dataclass
class Case:
    """One set of op arguments; `tensors()` lists every input a gradient is checked for."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: dict
    scale: float
    initial_state: tuple | None
    ln: tuple | None

    def tensors(self) -> dict:
        out = {"q": self.q, "k": self.k, "v": self.v}
        out.update({f"gate:{n}": g for n, g in self.gates.items()})
        for i, s in enumerate(self.initial_state or ()):
            out[f"initial_state[{i}]"] = s
        if self.ln is not None:
            out["ln_weight"], out["ln_bias"] = self.ln
        return out

    def map(self, fn) -> Case:
        """The same case with `fn` applied to every tensor."""
        return Case(
            fn(self.q), fn(self.k), fn(self.v),
            {n: fn(g) for n, g in self.gates.items()}, self.scale,
            None if self.initial_state is None else tuple(fn(s) for s in self.initial_state),
            None if self.ln is None else tuple(fn(t) for t in self.ln),
        )  # fmt: skip

    def to(self, device=None, dtype=None) -> Case:
        """The same case with every tensor moved (and, for `dtype`, cast)."""
        return self.map(lambda t: t.to(device=device, dtype=dtype))


def gate_ranges(spec: Spec) -> dict:
    """A range per gate in which the spec's update is well behaved (contracting, positive)."""
    ranges = {}

    def put(op, lo, hi):
        if isinstance(op, GateRef):
            ranges.setdefault(op.name, (lo, hi))

    ret = spec.retention
    put(spec.algorithm.lr, *((1e-4, 1e-3) if ret.kind == "kl" else (0.05, 0.5)))
    if ret.kind == "kl":
        put(ret.gate, 0.85, 1.0)
    elif ret.kind == "lq":
        put(ret.gate, 0.5, 1.0)
    elif ret.kind == "decay":
        put(ret.gate, 0.0, 0.5)
    elif ret.kind == "l2":
        put(ret.gate, 0.0, 1.0)
    put(spec.algorithm.momentum, 0.0, 0.9)
    for g in spec.gate_names:
        ranges.setdefault(g, (0.3, 2.0))  # bias parameters such as delta
    return ranges


def weight_shapes(spec: Spec, Dk: int, Dv: int) -> list:
    a = spec.architecture
    dims = [Dk] + [a.expansion * Dk] * (a.depth - 1) + [Dv]
    return list(itertools.pairwise(dims))


def make_case(
    spec: Spec,
    B: int = 2,
    T: int = 8,
    H: int = 2,
    Dk: int = 4,
    Dv: int | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    with_initial_state: bool | None = None,
) -> Case:
    """Random, well-scaled inputs for a spec (q, k L2-normalised, as the layer makes them)."""
    Dv = Dk if (Dv is None or spec.architecture.residual) else Dv
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    q, k = unit(randn(B, T, H, Dk)), unit(randn(B, T, H, Dk))
    v = randn(B, T, H, Dv)
    gates = {}
    for name, (lo, hi) in gate_ranges(spec).items():
        u = torch.rand(B, T, H, generator=g, dtype=torch.float64)
        gates[name] = (lo + (hi - lo) * u).to(dtype)
    if with_initial_state is None:
        with_initial_state = spec.needs_initial_state or seed % 2 == 1
    initial = None
    if with_initial_state:
        shapes = weight_shapes(spec, Dk, Dv)
        weights = [randn(B, H, i, o, std=i**-0.5) for i, o in shapes]
        if spec.retention.kind == "kl":
            weights = [torch.softmax(w, dim=-1) for w in weights]
        moms = (
            [randn(B, H, i, o, std=0.1 * i**-0.5) for i, o in shapes] if spec.has_momentum else []
        )
        initial = tuple(weights + moms)
    ln = None
    if spec.architecture.norm == "layernorm":
        ln = (1.0 + randn(H, Dv, std=0.1), randn(H, Dv, std=0.1))
    return Case(q, k, v, gates, 0.9, initial, ln)


def run(module, case: Case, backend: str, strategy: str | None = None):
    """(o, final state, {input name: gradient}) of a scalar probe loss over o and the state."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in case.tensors().items()}
    gates = {n[5:]: t for n, t in leaves.items() if n.startswith("gate:")}
    initial = tuple(t for n, t in leaves.items() if n.startswith("initial_state"))
    kwargs = dict(scale=case.scale, initial_state=initial or None, output_final_state=True)
    if "ln_weight" in leaves:
        kwargs.update(ln_weight=leaves["ln_weight"], ln_bias=leaves["ln_bias"])
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    if strategy is not None:
        ln = dict(ln_weight=None, ln_bias=None) | kwargs
        o, state = module.torch_backend.forward(q, k, v, gates, **ln, strategy=strategy)
    else:
        o, state = module.op(q, k, v, **gates, **kwargs, backend=backend)
    # a fixed, non-symmetric probe so that every output element matters
    g = torch.Generator().manual_seed(1234)
    probe = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)
    loss = (o * probe).sum() + sum(
        (s.to(o.dtype) * torch.randn(s.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum()
        for s in state
    )
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grad_map = {
        n: (gr if gr is not None else torch.zeros_like(t))
        for (n, t), gr in zip(leaves.items(), grads, strict=True)
    }
    return o.detach(), tuple(s.detach() for s in state), grad_map


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / max(||want||, floor), in float64 (fla's metric, with a floor)."""
    floor = ABS_FLOOR.get(got.dtype, max(ABS_FLOOR.values()))
    got, want = got.to(torch.float64), want.to(torch.float64)
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / max(want.norm().item(), floor)).item()


def rounding_sensitivity(
    module, case: Case, trials: int = 3, seed: int = 0, half_ulp: float = 6e-8
) -> dict:
    """How far the exact (float64) answer moves, per tensor, when every input is perturbed by
    a half-ulp (`half_ulp` relative; fp32's by default): what no implementation in that
    precision can do better than, whatever its order of operations. Large on ill-conditioned
    cases (a LayerNorm of an almost constant memory output); tiny on the rest. The largest
    change over `trials` perturbations."""
    base_o, base_s, base_g = run(module, case.to(dtype=torch.float64), "reference")
    g = torch.Generator().manual_seed(seed)

    def jiggle(t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return t * (1 + half_ulp * torch.randn(t.shape, generator=g, dtype=torch.float64))

    worst: dict = {}
    for _ in range(trials):
        moved = run(module, case.map(jiggle), "reference")
        errors = run_errors(module, moved, (base_o, base_s, base_g))
        worst = {n: max(e, worst.get(n, 0.0)) for n, e in errors.items()}
    return worst


def named(module, result: tuple) -> dict:
    """A `run` result's tensors by the names errors are reported under: `o`, `state:NAME`
    (the module's STATE_NAMES), `grad:INPUT`."""
    o, states, grads = result
    tensors = {"o": o}
    for name, s in zip(getattr(module, "STATE_NAMES", ()), states, strict=True):
        tensors[f"state:{name}"] = s
    tensors.update({f"grad:{name}": g for name, g in grads.items()})
    return tensors


def run_errors(module, got: tuple, want: tuple) -> dict:
    """Relative error per tensor between two `run` results: output, states, gradients."""
    got = named(module, got)
    return {name: relative_error(got[name], t) for name, t in named(module, want).items()}


def compare(module, case: Case, backend: str = "torch", strategy: str | None = None) -> dict:
    """Relative error per tensor of a backend against the reference on one case."""
    want = run(module, case, "reference")
    return run_errors(module, run(module, case, backend, strategy), want)


def slice_case(case: Case, start: int, stop: int, state) -> Case:
    """Tokens [start, stop) of a case, starting from `state`."""
    gates = {n: g[:, start:stop] for n, g in case.gates.items()}
    return Case(case.q[:, start:stop], case.k[:, start:stop], case.v[:, start:stop], gates,
                case.scale, state, case.ln)  # fmt: skip


def call(module, case: Case, **kw):
    """The op on a case (torch backend unless `backend` is given): (o, final state)."""
    norm = {"ln_weight": case.ln[0], "ln_bias": case.ln[1]} if case.ln is not None else {}
    return module.op(case.q, case.k, case.v, **case.gates, scale=case.scale,
                     initial_state=case.initial_state, output_final_state=True, **norm, **kw)  # fmt: skip


def continuation_error(module, case: Case, split: int, **kw) -> float:
    """Relative error between one call and three calls split at token `split` (chunk-aligned
    prefix, the rest of that chunk, then a call continuing the chunk from its anchor state):
    the op-level contract that exact decoding rests on. `kw` goes to every call (`backend`)."""
    chunk = module.torch_backend.CHUNK
    aligned = split - split % chunk
    o_full, _ = call(module, case, **kw)
    pieces = []
    anchor = case.initial_state
    if aligned:
        o, anchor = call(module, slice_case(case, 0, aligned, case.initial_state), **kw)
        pieces.append(o)
    o, state = call(module, slice_case(case, aligned, split, anchor), **kw)
    pieces.append(o)
    offset = (split - aligned) % chunk
    rest = slice_case(case, split, case.q.shape[1], state)
    o, _ = call(module, rest, anchor_state=anchor if offset else None, chunk_offset=offset, **kw)
    pieces.append(o)
    return relative_error(torch.cat(pieces, dim=1), o_full)


def decoding_error(module, case: Case, prefill: int, **kw) -> float:
    """Relative error between one call and a prefill of `prefill` tokens followed by one call
    per token, each continuing its chunk from that chunk's anchor (the state at its start), as a
    decoder keeps them. `kw` goes to every call (`backend`)."""
    chunk = module.torch_backend.CHUNK
    o_full, _ = call(module, case, **kw)
    aligned = prefill - prefill % chunk
    pieces, anchor = [], case.initial_state
    if aligned:
        o, anchor = call(module, slice_case(case, 0, aligned, case.initial_state), **kw)
        pieces.append(o)
    o, state = call(module, slice_case(case, aligned, prefill, anchor), **kw)
    pieces.append(o)
    for t in range(prefill, case.q.shape[1]):
        offset = t % chunk
        if offset == 0:
            anchor = state
        step = slice_case(case, t, t + 1, state)
        o, state = call(module, step, anchor_state=anchor if offset else None,
                        chunk_offset=offset, **kw)  # fmt: skip
        pieces.append(o)
    return relative_error(torch.cat(pieces, dim=1), o_full)


def spec_of(module) -> Spec:
    return from_data(module.SPEC_IR)
