"""The host side of the chunked dual-form forward kernel of a two-layer MLP memory (a generated
`triton_backend.py` supplies the kernel, printed with its loss and activation), for calls that
need no gradients: evaluation and prefill. Per chunk every gradient is taken at the chunk's
start state, so the reads and the update are tensor-core matmuls on [chunk x 64] tiles, with
the chunk's coefficients from the gates as in `dual_chunk` (exact with zero gates). The state
stays in global memory and passes through the chip one tile of 64 hidden units at a time.
Training calls keep the fused recurrent kernels: this kernel has no backward pass yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import BackendError
from .dual_chunk import MAX_TILE, MIN_TOKENS, _pow2, pack_coefficients
from .inputs import initial_weights
from .triton_host import custom_op, triton_interpreted
from .wy_chunk import dot_dtype

HIDDEN_TILE = 64  # hidden units per pass through the chip; half as many for heads over 64
STATE_TILE = 64 * 64  # what a hidden tile's weight tiles hold at most (no spills on sm_90)


class MlpChunkForward:
    """The forward kernel of one spec as a `torch.library` op (no autograd formula: calls that
    need gradients are refused, see `unsupported`); the generated backend passes its kernel,
    the memory's weight shapes, chunk, retention kind, whether it has momentum and what its
    missing initial state means (`required_state`, "" if zeros are fine)."""

    def __init__(self, namespace: str, kernel, *, shapes: Callable, chunk: int, retention: str,
                 momentum: bool, required_state: str):  # fmt: skip
        self.kernel, self.shapes, self.chunk = kernel, shapes, chunk
        self.retention, self.momentum = retention, momentum
        self.n_states = 4 if momentum else 2
        self.required_state = required_state
        self.min_tokens = MIN_TOKENS
        self.op = custom_op(f"{namespace}_mlp", lambda: self._register(f"{namespace}_mlp"))

    def unsupported(self, q: Tensor, v: Tensor, needs_grad: bool, chunk_offset: int = 0):
        """Why this call does not run on the chunked forward kernel, or None."""
        if needs_grad:
            return "the call needs gradients (the chunked MLP kernel has no backward pass yet)"
        if q.shape[1] < self.min_tokens:
            return f"fewer than {self.min_tokens} tokens"
        if chunk_offset:
            return "the call continues a chunk (chunk_offset > 0)"
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"the chunked kernel takes fp32, bf16 or fp16 inputs, not {q.dtype}"
        if not (q.is_cuda or triton_interpreted()):
            return "the chunked kernel needs CUDA tensors (or TRITON_INTERPRET=1)"
        if max(_pow2(q.shape[-1]), _pow2(v.shape[-1])) > MAX_TILE:
            return f"the chunked kernel holds key and value rows of at most {MAX_TILE} columns"
        return None

    def meta(self, Dk: int, Dv: int, dot) -> dict:
        """The kernel's compile-time constants (`dot`: the matmul operands' dtype)."""
        hidden = self.shapes(Dk, Dv)[0][1]
        BK, BV = _pow2(Dk), _pow2(Dv)
        BE = min(HIDDEN_TILE, STATE_TILE // max(BK, BV), _pow2(hidden))
        return dict(DK=Dk, DV=Dv, HID=hidden, BK=BK, BV=BV, BE=BE, BT=self.chunk, DOT=dot)

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps: 4 spill at Dk = Dv = 64 on sm_90 (benchmarks/gpu_static.py)."""
        return dict(num_warps=8, num_stages=1)

    def launch(self, q, k, v, coef, ends, d, params, state, ln, scale: float):
        """(o, the final state, flat as `state`): one program per (batch, head)."""
        B, T, H, Dk = q.shape
        Dv, (_, BH, TP), NT = v.shape[-1], coef.shape, ends.shape[-1]
        o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
        final = state.clone()  # the kernel updates the state in place
        self.kernel[(BH,)](q, k, v, coef, ends, d, params, final, ln, o, scale, T, H, TP, NT,
                           **self.meta(Dk, Dv, dot_dtype(q.dtype)),
                           **self.launch_options(Dk, Dv))  # fmt: skip
        return o, final

    def _register(self, namespace: str):
        """The kernel as a torch.library custom op with a fake kernel, so that torch.compile
        traces through it."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def mlp_forward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, ends: Tensor, d: Tensor,
            params: Tensor, state: Tensor, ln: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor]:  # fmt: skip
            return self.launch(q, k, v, coef, ends, d, params, state, ln, scale)

        @mlp_forward.register_fake
        def _(q, k, v, coef, ends, d, params, state, ln, scale):
            return q.new_empty((*q.shape[:3], v.shape[-1])), state.new_empty(state.shape)

        return mlp_forward

    def forward(
        self, q, k, v, lr, rate, mom, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked
        forward kernel, for gates lr, rate (None without a retention gate), mom (None without
        momentum) and the loss's gate parameters, each [B, H, T]; `ln_weight`, `ln_bias`
        [H, Dv] (default 1 and 0) when the memory has a LayerNorm. A call continuing a chunk is
        not taken (`unsupported`), so `anchor_state` plays no part."""
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (q, k, v, lr, rate, mom, ln_weight, ln_bias, *params,
                      *(initial_state or ()))
        )  # fmt: skip
        reason = self.unsupported(q, v, needs_grad, chunk_offset)
        if reason is not None:
            raise BackendError(reason)
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        shapes = self.shapes(Dk, Dv)
        states = initial_weights(initial_state, shapes, self.n_states, q, self.required_state)
        per_token, ends, d, stacked = pack_coefficients(
            self.retention, self.momentum, self.chunk, lr, rate, mom, params
        )
        flat = torch.cat([s.reshape(B * H, -1).float() for s in states], dim=-1).contiguous()
        f32 = dict(dtype=torch.float32, device=q.device)
        ln = torch.stack([
            torch.ones(H, Dv, **f32) if ln_weight is None else ln_weight.float(),
            torch.zeros(H, Dv, **f32) if ln_bias is None else ln_bias.float(),
        ]).contiguous()  # fmt: skip
        o, final = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), per_token, ends, d, stacked, flat, ln,
            float(scale),
        )  # fmt: skip
        if not output_final_state:
            return o, None
        every = shapes * (self.n_states // len(shapes))
        parts = final.split([i * o_ for i, o_ in every], dim=-1)
        return o, tuple(p.reshape(B, H, *s) for p, s in zip(parts, every, strict=True))
