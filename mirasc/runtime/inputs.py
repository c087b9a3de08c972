"""The op contract's input side: argument checks, gates and states in the compute dtype, the
chunk boundaries of a call, backend choice, and the decay-product matrices of the chunked form."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import BackendError

BACKENDS = ("auto", "torch", "triton", "reference")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (to be held to the oracle); every other input accumulates in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise BackendError(f"{name} must be a tensor [B, T, H, D]")
        if not t.is_floating_point():
            raise BackendError(f"{name} must be floating point, got {t.dtype}")
    if q.shape != k.shape:
        raise BackendError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if v.shape[:3] != q.shape[:3]:
        raise BackendError(f"v {tuple(v.shape)} must match q's [B, T, H] {tuple(q.shape[:3])}")
    if residual and v.shape[-1] != k.shape[-1]:
        raise BackendError(
            f"a residual memory needs Dk == Dv, got Dk={k.shape[-1]}, Dv={v.shape[-1]}"
        )


def gate(value, name: str, q: torch.Tensor) -> torch.Tensor:
    """A gate argument as [B, H, T] in the compute dtype; a number is broadcast."""
    B, T, H, _ = q.shape
    dt = compute_dtype(q)
    if value is None:
        raise BackendError(f"gate {name!r} is required")
    if isinstance(value, (int, float)):
        return q.new_full((B, H, T), float(value), dtype=dt)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (B, T, H):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise BackendError(f"gate {name!r} must be [B, T, H] = {(B, T, H)}, got {shape}")
    return value.transpose(1, 2).to(dt)


def initial_weights(
    initial_state, shapes: list, n_states: int, q: torch.Tensor, required: str,
    what: str = "initial_state",
):  # fmt: skip
    """The starting state tuple in the compute dtype; momentum buffers may be omitted. `what`
    names the argument in errors."""
    dt = compute_dtype(q)
    B, _, H, _ = q.shape
    if initial_state is None:
        if required:
            raise BackendError(required)
        return [q.new_zeros((B, H, *s), dtype=dt) for s in shapes] * (n_states // len(shapes))
    state = list(initial_state)
    if len(state) == len(shapes) and n_states > len(shapes):
        state += [torch.zeros_like(s) for s in state]
    if len(state) != n_states:
        raise BackendError(f"{what} must hold {n_states} tensors, got {len(state)}")
    for s, shape in zip(state, shapes * (n_states // len(shapes)), strict=True):
        if tuple(s.shape) != (B, H, *shape):
            raise BackendError(f"{what} tensor {tuple(s.shape)} does not match {(B, H, *shape)}")
    return [s.to(dt) for s in state]


def anchor_weights(anchor_state, offset: int, chunk: int, shapes: list, q, required: str):
    """The weights a partial first chunk takes its gradients at (decoding continues a chunk)."""
    if not isinstance(offset, int) or not 0 <= offset < chunk:
        raise BackendError(f"chunk_offset must be an int in [0, {chunk}), got {offset!r}")
    if offset == 0:
        return None
    if anchor_state is not None:
        anchor_state = tuple(anchor_state)[: len(shapes)]  # weights only
    elif required:  # None: the chunk began at the default state, and this memory has none
        raise BackendError(
            f"chunk_offset={offset} continues a chunk: pass anchor_state, the weights that chunk "
            "began at (this memory has no default starting state)"
        )
    return initial_weights(anchor_state, shapes, len(shapes), q, required, "anchor_state")


def chunks(T: int, chunk: int, offset: int = 0):
    """(start, stop, continuing, complete) per chunk of a call: the first chunk is the rest of
    a chunk already `offset` tokens in; `complete` when the chunk reaches its full length."""
    start = 0
    size = chunk - offset
    while start < T:
        stop = min(start + size, T)
        yield start, stop, start == 0 and offset > 0, stop - start == size
        start, size = stop, chunk


@dataclass(frozen=True)
class LoopInputs:
    """A recurrent loop's inputs, split once: per chunk (k, v [B, H, c, D], the loss's gate
    parameters and `first`'s retained factor rho [B, H, c, 1]) and per token (scale * q
    [B, H, 1, Dk], the step size, retention and momentum gates [B, H, 1, 1]). Splitting once
    matters: the backward pass of a slice fills a zero tensor of the whole input, which per token
    would cost O(T^2)."""

    spans: list  # (start, stop, continuing, complete) per chunk
    k: tuple
    v: tuple
    params: dict
    rho: tuple | None
    x: tuple
    e: tuple
    rate: tuple | None
    mom: tuple | None


def loop_inputs(
    q, k, v, *, lr, rate, mom, params: dict, scale, chunk: int, offset: int, first: bool
) -> LoopInputs:
    """The inputs of a call [B, H, T, ..] split for the token-by-token loop (see LoopInputs)."""
    spans = list(chunks(q.shape[2], chunk, offset))
    sizes = [stop - start for start, stop, _, _ in spans]

    def tokens(g):
        return None if g is None else g[..., None, None].unbind(2)

    return LoopInputs(
        spans=spans,
        k=k.split(sizes, dim=2),
        v=v.split(sizes, dim=2),
        params={name: p.unsqueeze(-1).split(sizes, dim=2) for name, p in params.items()},
        rho=(1.0 - rate).unsqueeze(-1).split(sizes, dim=2) if first else None,
        x=(scale * q).unsqueeze(3).unbind(2),
        e=tokens(lr),
        rate=tokens(rate),
        mom=tokens(mom),
    )


def pick_backend(backend: str, q: torch.Tensor, has_triton: bool) -> str:
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "triton" if (q.is_cuda and has_triton) else "torch"
    if backend == "triton" and not has_triton:
        raise BackendError(
            "this package has no Triton backend (triton is not installed); use backend='torch'"
        )
    return backend


def warn_fallback(name: str, reason: str) -> None:
    """backend='auto' chose Triton but these inputs cannot run there: say so, use torch."""
    warnings.warn(f"{name}: using the torch backend: {reason}", stacklevel=3)


def products(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For per-token factors r [..., c]: (prod_{j<=t} r_j, P) with P[t, s] = prod_{s<j<=t} r_j
    for s <= t and 0 above the diagonal. Exact with zero or negative factors (no logarithms)."""
    c = r.shape[-1]
    strict = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(-1)
    grid = torch.where(
        strict, r.unsqueeze(-1).expand(*r.shape, c), torch.ones_like(r).unsqueeze(-1)
    )
    prod = torch.cumprod(grid, dim=-2)
    return torch.cumprod(r, dim=-1), prod * strict.logical_or(
        torch.eye(c, dtype=torch.bool, device=r.device)
    )


def reference(spec_data, q, k, v, gates: dict, **kwargs):
    """The autograd oracle of `mirasc.reference` on the spec this package was compiled from."""
    from ..ir.spec import from_data
    from ..testing.reference import run

    return run(from_data(spec_data), q, k, v, gates, **kwargs)
