"""The host side of a generated Triton backend: everything its spec does not decide (limits,
launches, the `torch.library` custom-op pair and its autograd formula, the state layout)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..errors import BackendError
from .inputs import anchor_weights, initial_weights


def triton_interpreted() -> bool:
    """Triton kernels run in its CPU interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_CUSTOM_OPS: dict[str, object] = {}


def split_state(flat: torch.Tensor, shapes: list, n_states: int, B: int, H: int) -> tuple:
    """The state tuple from the kernels' flat layout (each (batch, head)'s weights, then
    momenta, concatenated along the last dimension)."""
    every = shapes * (n_states // len(shapes))
    parts = flat.split([i * o for i, o in every], dim=-1)
    return tuple(p.reshape(B, H, *s) for p, s in zip(parts, every, strict=True))


def custom_op(namespace: str, register: Callable[[], object]):
    """A generated package's torch.library op, registered once per process: the namespace
    carries the spec's hash, so a second import of the same spec reuses the first one's."""
    if namespace not in _CUSTOM_OPS:
        _CUSTOM_OPS[namespace] = register()
    return _CUSTOM_OPS[namespace]


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class FusedRecurrent:
    """Everything of a Triton backend that its spec does not decide: the limits, the launches,
    the `torch.library` custom-op pair with its autograd formula, and the op contract's state
    layout. A generated `triton_backend.py` supplies its two kernels and its spec's sizes; the
    kernels take the arguments in the order the launches below pass them."""

    MAX_TILE = 1 << 16  # elements of one on-chip weight tile ([in, out] padded to powers of 2)
    VALUE_TILE = 32  # value columns per program where the plan splits them (`value_tiles`)

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
        value_tiles: bool = False,
    ):
        self.forward_kernel, self.backward_kernel = forward_kernel, backward_kernel
        self.shapes, self.hidden_factor = shapes, hidden_factor
        self.chunk, self.segment = chunk, segment  # segment: tokens between saved states
        self.n_states, self.required_state, self.layer_norm = n_states, required_state, layer_norm
        self.value_tiles = value_tiles  # a linear memory whose value columns update on their own
        self.op = custom_op(namespace, lambda: self._register(namespace))

    def value_tile(self, Dv: int) -> int:
        """Value columns per program: VALUE_TILE where the plan splits them, else all."""
        whole = _pow2(Dv)
        return min(self.VALUE_TILE, whole) if self.value_tiles else whole

    def value_programs(self, Dv: int) -> int:
        """Programs per (batch, head), one per tile of value columns."""
        return -(-Dv // self.value_tile(Dv))

    def tiles(self, Dk: int, Dv: int) -> list:
        """Elements of each weight tile a program holds (padded to powers of 2)."""
        if self.value_tiles:  # a linear memory: one [Dk, value tile] tile
            return [_pow2(Dk) * self.value_tile(Dv)]
        return [_pow2(i) * _pow2(o) for i, o in self.shapes(Dk, Dv)]

    def meta(self, Dk: int, Dv: int, offset: int) -> dict:
        """The kernels' compile-time constants."""
        hidden = self.hidden_factor * Dk
        return dict(
            DK=Dk, DV=Dv, HID=hidden, BK=_pow2(Dk), BV=self.value_tile(Dv), BH=_pow2(hidden),
            CH=self.chunk, SEG=self.segment, CONTINUING=offset > 0,
        )  # fmt: skip

    def launch_options(self, Dk: int, Dv: int) -> dict:
        """More warps for larger tiles, so each thread holds fewer of the state's elements."""
        return dict(num_warps=4 if max(self.tiles(Dk, Dv)) <= 4096 else 8)

    def segments(self, T: int, offset: int) -> int:
        return (T + offset + self.segment - 1) // self.segment

    def unsupported(self, q: torch.Tensor, v: torch.Tensor) -> str | None:
        """Why these inputs cannot run on the fused kernels, or None."""
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"the Triton backend takes fp32, bf16 or fp16 inputs, not {q.dtype}"
        if not (q.is_cuda or triton_interpreted()):
            return "the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for its CPU interpreter)"
        Dk, Dv = q.shape[-1], v.shape[-1]
        for (i, o), tile in zip(self.shapes(Dk, Dv), self.tiles(Dk, Dv), strict=True):
            if tile > self.MAX_TILE:
                return (
                    f"a {i} x {o} weight matrix needs an on-chip tile of {tile} elements, over the "
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
        self.forward_kernel[(B * H, self.value_programs(Dv))](
            q, k, v, gates, state, anchor, ln, o, final, ckpt, T, H, offset, nseg, scale,
            **self.meta(Dk, Dv, offset), **self.launch_options(Dk, Dv),
        )  # fmt: skip
        return o, final, ckpt

    def launch_backward(self, q, k, v, gates, state, anchor, ln, ckpt, do, dfinal, scale, offset):
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        nan = float("nan")
        f32 = dict(dtype=torch.float32, device=q.device)
        NV = self.value_programs(Dv)  # each value tile's program adds its share of dq, dk, dg
        dq = torch.full((NV, B, T, H, Dk), nan, **f32)
        dk = torch.full((NV, B, T, H, Dk), nan, **f32)
        dv = torch.full((B, T, H, Dv), nan, **f32)
        dgates = torch.full((NV, *gates.shape), nan, dtype=gates.dtype, device=gates.device)
        dstate = torch.full_like(state, nan)
        danchor = torch.zeros_like(anchor)
        dln = torch.zeros((B, H, 2, Dv), **f32)
        scratch = torch.empty((B * H * (self.segment + 1) * state.shape[-1],), **f32)
        self.backward_kernel[(B * H, NV)](
            q, k, v, gates, state, anchor, ln, ckpt, do.contiguous(), dfinal.contiguous(), scratch,
            dq, dk, dv, dgates, dstate, danchor, dln, T, H, offset, ckpt.shape[2], scale,
            **self.meta(Dk, Dv, offset), **self.launch_options(Dk, Dv),
        )  # fmt: skip
        dln = dln.sum(0).transpose(0, 1).contiguous() if ln.numel() else torch.zeros_like(ln)
        dq, dk, dgates = dq.sum(0), dk.sum(0), dgates.sum(0)
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

    def forward(
        self,
        q,
        k,
        v,
        rows,
        *,
        scale,
        initial_state,
        output_final_state,
        ln_weight,
        ln_bias,
        anchor_state=None,
        chunk_offset=0,
    ):
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
        return o, split_state(final, shapes, self.n_states, B, H)
