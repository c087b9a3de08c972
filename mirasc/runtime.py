"""What generated code imports besides torch and triton: input checks, backend choice, the
decay-product matrices of the chunked form, and the layer's standard parts.

It never imports the compiler (sympy, lark, jinja2): a trained model needs only this module.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from itertools import pairwise
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackendError
from .spec import INIT_GRID

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


def initial_weights(initial_state, shapes: list, n_states: int, q: torch.Tensor, required: str):
    """The starting state tuple in the compute dtype; momentum buffers may be omitted."""
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
        raise BackendError(f"initial_state must hold {n_states} tensors, got {len(state)}")
    for s, shape in zip(state, shapes * (n_states // len(shapes)), strict=True):
        if tuple(s.shape) != (B, H, *shape):
            raise BackendError(
                f"initial_state tensor {tuple(s.shape)} does not match {(B, H, *shape)}"
            )
    return [s.to(dt) for s in state]


def anchor_weights(anchor_state, offset: int, chunk: int, shapes: list, q, required: str):
    """The weights a partial first chunk takes its gradients at (decoding continues a chunk)."""
    if not isinstance(offset, int) or not 0 <= offset < chunk:
        raise BackendError(f"chunk_offset must be an int in [0, {chunk}), got {offset!r}")
    if offset == 0:
        return None
    if anchor_state is not None:
        anchor_state = tuple(anchor_state)[: len(shapes)]  # weights only
    # None: the chunk began at the default initial state (zeros), where there is one
    return initial_weights(anchor_state, shapes, len(shapes), q, required)


def chunks(T: int, chunk: int, offset: int = 0):
    """(start, stop, continuing, complete) per chunk of a call: the first chunk is the rest of
    a chunk already `offset` tokens in; `complete` when the chunk reaches its full length."""
    start = 0
    size = chunk - offset
    while start < T:
        stop = min(start + size, T)
        yield start, stop, start == 0 and offset > 0, stop - start == size
        start, size = stop, chunk


def triton_interpreted() -> bool:
    """Triton kernels run in its CPU interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def warn_fallback(name: str, reason: str) -> None:
    """backend='auto' chose Triton but these inputs cannot run there: say so, use torch."""
    warnings.warn(f"{name}: using the torch backend: {reason}", stacklevel=3)


_CUSTOM_OPS: dict[str, object] = {}


def custom_op(namespace: str, register: Callable[[], object]):
    """A generated package's torch.library op, registered once per process: the namespace
    carries the spec's hash, so a second import of the same spec reuses the first one's."""
    if namespace not in _CUSTOM_OPS:
        _CUSTOM_OPS[namespace] = register()
    return _CUSTOM_OPS[namespace]


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
    from .reference import run
    from .spec import from_data

    return run(from_data(spec_data), q, k, v, gates, **kwargs)


# ---- the layer's standard parts -------------------------------------------------------------
class MemoryCache(NamedTuple):
    """A layer's decoding state: memory state, the anchor state and offset of the chunk in
    progress (offset 0: none), and the short convolutions' last inputs."""

    memory: tuple | None = None
    anchor: tuple | None = None
    offset: int = 0
    conv: tuple = (None, None, None)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class ShortConvolution(nn.Module):
    """Depthwise causal 1-D convolution over time, then SiLU (fla/Mamba convention).

    `forward(x, cache)` takes and returns the last `kernel_size - 1` inputs, so a sequence split
    across calls gives the same result as one call.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel_size) / kernel_size**0.5)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        B, _T, C = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.kernel_size - 1, C)
        full = torch.cat([cache, x], dim=1)
        y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=C).transpose(1, 2)
        return F.silu(y), full[:, full.shape[1] - (self.kernel_size - 1) :]


class MemoryLayer(nn.Module):
    """A compiled memory as a token mixer for [B, T, hidden] inputs: projections for q, k, v
    and each gate, optional short convolution and q/k L2 norm, the memory op, then a per-head
    RMSNorm, an output gate and the output projection. Each gate is its spec formula applied to
    a learned linear pre-activation z = W_g x. A generated subclass sets the class attributes.
    """

    op: ClassVar  # the generated op, as a staticmethod
    read: ClassVar  # the generated read-only op, as a staticmethod
    chunk: ClassVar[int]
    gate_formulas: ClassVar[dict]  # gate name -> formula of z
    gate_targets: ClassVar[dict]  # gate name -> value its formula should start near
    layer_norm: ClassVar[bool]  # the memory has a LayerNorm (gain and bias are learned here)
    initial_kind: ClassVar[str]  # "zeros", "learned", or "simplex" (softmax of learned logits)
    depth: ClassVar[int]
    expansion: ClassVar[int]

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        use_short_conv: bool = True,
        conv_size: int = 4,
        qk_norm: bool = True,
        output_gate: bool = True,
        scale: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        head_dim = head_dim or hidden_size // num_heads
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.qk_norm, self.scale, self.backend = qk_norm, scale, backend
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.convs = (
            nn.ModuleList([ShortConvolution(inner, conv_size) for _ in range(3)])
            if use_short_conv
            else None
        )
        self.gate_proj = nn.ModuleDict(
            {name: nn.Linear(hidden_size, num_heads) for name in self.gate_formulas}
        )
        with torch.no_grad():  # start retention gates near their targets (any formula of z)
            grid = torch.linspace(*INIT_GRID)
            for name, target in self.gate_targets.items():
                values = self.gate_formulas[name](grid)
                self.gate_proj[name].bias.fill_(grid[(values - target).abs().argmin()].item())
        if self.layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(num_heads, head_dim))
            self.ln_bias = nn.Parameter(torch.zeros(num_heads, head_dim))
        if self.initial_kind != "zeros":  # per-head initial weights, trained through the op
            dims = [head_dim] + [self.expansion * head_dim] * (self.depth - 1) + [head_dim]
            self.initial = nn.ParameterList(
                nn.Parameter(torch.randn(num_heads, i, o) * (i**-0.5 if self.depth > 1 else 0.0))
                for i, o in pairwise(dims)
            )
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-5)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False) if output_gate else None
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def norm_args(self) -> dict:
        """The op's LayerNorm arguments (none when the memory has no LayerNorm)."""
        return {"ln_weight": self.ln_weight, "ln_bias": self.ln_bias} if self.layer_norm else {}

    def starting_memory(self, batch_size: int, like: torch.Tensor) -> tuple:
        """The memory before any write: the learned initial weights, or zeros (linear)."""
        D = self.head_dim
        return self.initial_state(batch_size) or (like.new_zeros(batch_size, self.num_heads, D, D),)

    def initial_state(self, batch_size: int):
        """The memory's starting weights for a batch (None: the op's zeros)."""
        if self.initial_kind == "zeros":
            return None
        weights = list(self.initial)
        if self.initial_kind == "simplex":  # strictly positive rows, as kl retention needs
            weights = [torch.softmax(w, dim=-1) for w in weights]
        return tuple(w.unsqueeze(0).expand(batch_size, *w.shape) for w in weights)

    def forward(self, x: torch.Tensor, state=None, use_cache: bool = False):
        """x [B, T, hidden] -> y [B, T, hidden], or (y, cache) with use_cache.

        The cache (`MemoryCache`) holds the memory state, the anchor state and offset of the
        chunk in progress, and the convolutions' last inputs: a prefill of any length followed
        by token-by-token decoding equals one pass over the whole sequence.
        """
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        cache = state if state is not None else MemoryCache()
        if T == 0:  # e.g. an empty prompt
            return (x, cache) if use_cache else x
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        conv_cache = cache.conv
        if self.convs is not None:
            (q, cq), (k, ck), (v, cv) = (
                conv(t, c) for conv, t, c in zip(self.convs, (q, k, v), conv_cache, strict=True)
            )
            conv_cache = (cq, ck, cv)
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        if self.qk_norm:
            q, k = l2norm(q), l2norm(k)
        gates = {name: self.gate_formulas[name](proj(x)) for name, proj in self.gate_proj.items()}
        memory = cache.memory if cache.memory is not None else self.initial_state(B)
        if use_cache or cache.offset:
            o, memory, anchor, offset = self.memory_segments(q, k, v, gates, memory, cache)
        else:  # training: one call, which starts a chunk
            o, memory = self.memory(q, k, v, gates, memory)
            anchor, offset = None, 0
        o = self.o_norm(o).reshape(B, T, H * D)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        y = self.o_proj(o)
        return (y, MemoryCache(memory, anchor, offset, conv_cache)) if use_cache else y

    def retrieve(self, x: torch.Tensor, memory) -> torch.Tensor:
        """M*(x): the memory at state `memory` applied to queries from x, without writing,
        through the same query and output paths (no convolution: retrieval is stateless)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        if self.qk_norm:
            q = l2norm(q)
        if memory is None:
            memory = self.starting_memory(B, x)
        o = self.read(q, memory, scale=self.scale, **self.norm_args())
        o = self.o_norm(o).reshape(B, T, -1)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o)

    def memory_segments(self, q, k, v, gates, memory, cache):
        """The op over a segment that may start inside a chunk: finish the chunk in progress
        (gradients at its anchor), run the whole chunks, then start the last, partial chunk,
        whose starting state becomes the next anchor. Returns (o, state, anchor, offset)."""
        chunk, T = self.chunk, q.shape[1]
        anchor, offset = cache.anchor, cache.offset

        def piece(start, stop, state, *continuing):
            gate_slice = {n: g[:, start:stop] for n, g in gates.items()}
            return self.memory(q[:, start:stop], k[:, start:stop], v[:, start:stop], gate_slice,
                               state, *continuing)  # fmt: skip

        pieces, start = [], 0
        if offset:
            start = min(chunk - offset, T)
            o, memory = piece(0, start, memory, anchor, offset)
            pieces.append(o)
            offset = (offset + start) % chunk
        rest = T - start
        for stop in (start + rest - rest % chunk, T):
            if stop > start:
                if stop == T and rest % chunk:  # a partial chunk begins here
                    anchor, offset = memory, rest % chunk
                o, memory = piece(start, stop, memory)
                pieces.append(o)
                start = stop
        return torch.cat(pieces, dim=1), memory, anchor, offset

    def memory(self, q, k, v, gates, initial_state, anchor_state=None, chunk_offset=0):
        """The raw op on projected inputs; returns (o, final state)."""
        return self.op(
            q,
            k,
            v,
            **gates,
            scale=self.scale,
            initial_state=initial_state,
            output_final_state=True,
            backend=self.backend,
            anchor_state=anchor_state,
            chunk_offset=chunk_offset,
            **self.norm_args(),
        )


# ---- the host side of a generated Triton backend ------------------------------------------------
def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class FusedRecurrent:
    """Everything of a Triton backend that its spec does not decide: the limits, the launches,
    the `torch.library` custom-op pair with its autograd formula, and the op contract's state
    layout. A generated `triton_backend.py` supplies its two kernels and its spec's sizes; the
    kernels take the arguments in the order the launches below pass them."""

    MAX_TILE = 1 << 16  # elements of one on-chip weight tile ([in, out] padded to powers of 2)

    def __init__(
        self,
        namespace: str,
        forward_kernel,
        backward_kernel,
        *,
        shapes: Callable,
        hidden_factor: int,
        chunk: int,
        segment: int,
        n_states: int,
        required_state: str,
        layer_norm: bool,
    ):
        self.forward_kernel, self.backward_kernel = forward_kernel, backward_kernel
        self.shapes, self.hidden_factor = shapes, hidden_factor
        self.chunk, self.segment = chunk, segment  # segment: tokens between saved states
        self.n_states, self.required_state, self.layer_norm = n_states, required_state, layer_norm
        self.op = custom_op(namespace, lambda: self._register(namespace))

    def meta(self, Dk: int, Dv: int, offset: int) -> dict:
        """The kernels' compile-time constants."""
        hidden = self.hidden_factor * Dk
        return dict(
            DK=Dk, DV=Dv, HID=hidden, BK=_pow2(Dk), BV=_pow2(Dv), BH=_pow2(hidden),
            CH=self.chunk, SEG=self.segment, CONTINUING=offset > 0,
        )  # fmt: skip

    def launch_options(self, Dk: int, Dv: int) -> dict:
        """More warps for larger tiles, so each thread holds fewer of the state's elements."""
        largest = max(_pow2(i) * _pow2(o) for i, o in self.shapes(Dk, Dv))
        return dict(num_warps=4 if largest <= 4096 else 8)

    def segments(self, T: int, offset: int) -> int:
        return (T + offset + self.segment - 1) // self.segment

    def unsupported(self, q: torch.Tensor, v: torch.Tensor) -> str | None:
        """Why these inputs cannot run on the fused kernels, or None."""
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"the Triton backend takes fp32, bf16 or fp16 inputs, not {q.dtype}"
        if not (q.is_cuda or triton_interpreted()):
            return "the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for its CPU interpreter)"
        for i, o in self.shapes(q.shape[-1], v.shape[-1]):
            if _pow2(i) * _pow2(o) > self.MAX_TILE:
                return (
                    f"a {i} x {o} weight matrix needs a {_pow2(i)} x {_pow2(o)} on-chip tile, over the "
                    f"{self.MAX_TILE}-element limit of this fused kernel (smaller head_dim, or backend='torch')"
                )
        return None

    def launch_forward(self, q, k, v, gates, state, anchor, ln, scale, offset):
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        nseg = self.segments(T, offset)
        o = torch.full((B, T, H, Dv), float("nan"), dtype=q.dtype, device=q.device)
        final = torch.full_like(state, float("nan"))
        ckpt = torch.empty((B, H, nseg, state.shape[-1]), dtype=torch.float32, device=q.device)
        self.forward_kernel[(B * H,)](
            q, k, v, gates, state, anchor, ln, o, final, ckpt, T, H, offset, nseg, scale,
            **self.meta(Dk, Dv, offset), **self.launch_options(Dk, Dv),
        )  # fmt: skip
        return o, final, ckpt

    def launch_backward(self, q, k, v, gates, state, anchor, ln, ckpt, do, dfinal, scale, offset):
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        nan = float("nan")
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = torch.full((B, T, H, Dk), nan, **f32)
        dk = torch.full((B, T, H, Dk), nan, **f32)
        dv = torch.full((B, T, H, Dv), nan, **f32)
        dgates = torch.full_like(gates, nan)
        dstate = torch.full_like(state, nan)
        danchor = torch.zeros_like(anchor)
        dln = torch.zeros((B, H, 2, Dv), **f32)
        scratch = torch.empty((B * H * (self.segment + 1) * state.shape[-1],), **f32)
        self.backward_kernel[(B * H,)](
            q, k, v, gates, state, anchor, ln, ckpt, do.contiguous(), dfinal.contiguous(), scratch,
            dq, dk, dv, dgates, dstate, danchor, dln, T, H, offset, ckpt.shape[2], scale,
            **self.meta(Dk, Dv, offset), **self.launch_options(Dk, Dv),
        )  # fmt: skip
        dln = dln.sum(0).transpose(0, 1).contiguous() if ln.numel() else torch.zeros_like(ln)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dgates, dstate, danchor, dln

    def _register(self, namespace: str):
        """The pair as torch.library custom ops (fake implementations included, so that
        torch.compile traces through them) with a registered autograd formula."""

        @torch.library.custom_op(f"{namespace}::fused_forward", mutates_args=())
        def fused_forward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, state: torch.Tensor, anchor: torch.Tensor,
            ln: torch.Tensor, scale: float, offset: int,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
            return self.launch_forward(q, k, v, gates, state, anchor, ln, scale, offset)

        @fused_forward.register_fake
        def _(q, k, v, gates, state, anchor, ln, scale, offset):
            B, T, H, _ = q.shape
            return (
                q.new_empty((B, T, H, v.shape[-1])),
                state.new_empty(state.shape),
                state.new_empty((B, H, self.segments(T, offset), state.shape[-1])),
            )

        @torch.library.custom_op(f"{namespace}::fused_backward", mutates_args=())
        def fused_backward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, state: torch.Tensor, anchor: torch.Tensor,
            ln: torch.Tensor, ckpt: torch.Tensor, do: torch.Tensor, dfinal: torch.Tensor, scale: float, offset: int,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
            return self.launch_backward(
                q, k, v, gates, state, anchor, ln, ckpt, do, dfinal, scale, offset
            )

        @fused_backward.register_fake
        def _(q, k, v, gates, state, anchor, ln, ckpt, do, dfinal, scale, offset):
            return tuple(t.new_empty(t.shape) for t in (q, k, v, gates, state, anchor, ln))

        def setup_context(ctx, inputs, output):
            q, k, v, gates, state, anchor, ln, scale, offset = inputs
            ctx.save_for_backward(q, k, v, gates, state, anchor, ln, output[2])
            ctx.scale, ctx.offset = scale, offset

        def backward(ctx, do, dfinal, _dckpt):
            q, k, v, gates, state, anchor, ln, ckpt = ctx.saved_tensors
            if do is None:
                do = torch.zeros((*q.shape[:3], v.shape[-1]), dtype=q.dtype, device=q.device)
            dfinal = torch.zeros_like(state) if dfinal is None else dfinal
            grads = fused_backward(
                q, k, v, gates, state, anchor, ln, ckpt, do, dfinal, ctx.scale, ctx.offset
            )
            return (*grads, None, None)

        fused_forward.register_autograd(backward, setup_context=setup_context)
        return fused_forward

    def forward(self, q, k, v, rows, scale, initial_state, output_final_state, ln_weight, ln_bias,
                anchor_state=None, chunk_offset=0):  # fmt: skip
        """The op contract on the fused kernels; `rows` are the gates [B, H, T] in the
        kernels' order (learning rate, retention gate, momentum, loss parameters)."""
        reason = self.unsupported(q, v)
        if reason is not None:
            raise BackendError(reason)
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        shapes = self.shapes(Dk, Dv)
        state = initial_weights(initial_state, shapes, self.n_states, q, self.required_state)
        anchor = anchor_weights(
            anchor_state, chunk_offset, self.chunk, shapes, q, self.required_state
        )
        if T == 0:  # nothing to read or write: the state passes through
            return q.new_zeros(B, 0, H, Dv), (tuple(state) if output_final_state else None)
        flat = torch.cat([s.reshape(B, H, -1) for s in state], dim=-1).contiguous()
        anchor_flat = (
            q.new_empty(0, dtype=torch.float32)
            if anchor is None
            else torch.cat([s.reshape(B, H, -1) for s in anchor], dim=-1).contiguous()
        )
        ln = q.new_empty(0, dtype=torch.float32)
        if self.layer_norm:
            f32 = dict(dtype=torch.float32)
            ln = torch.stack([
                q.new_ones(H, Dv, **f32) if ln_weight is None else ln_weight.float(),
                q.new_zeros(H, Dv, **f32) if ln_bias is None else ln_bias.float(),
            ]).contiguous()  # fmt: skip
        o, final, _ = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), torch.stack(rows).contiguous(),
            flat, anchor_flat, ln, float(scale), int(chunk_offset),
        )  # fmt: skip
        if not output_final_state:
            return o, None
        every = shapes * (self.n_states // len(shapes))
        parts = final.split([i * o_ for i, o_ in every], dim=-1)
        return o, tuple(p.reshape(B, H, *s) for p, s in zip(parts, every, strict=True))
