"""The host side of the chunked forward kernel of a two-layer MLP memory under kl retention
(MEMORA; a generated `triton_backend.py` supplies the kernel, printed with its loss and
activation). Per chunk every gradient is taken at the chunk's start state, so each layer's
logits are the anchor's plus tensor-core products of the chunk's rank-one factors, and every
token's own state is a row softmax of them (the torch backend's `chunked_kl`). The state stays
in global memory and passes through the chip a tile of hidden units at a time.

Forward only: calls that need a gradient (training) keep the fused recurrent kernels, whose
backward pass covers kl; these take inference, evaluation and prefill.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import BackendError
from .dual_chunk import MIN_TOKENS, _pow2, layer_norm_params, pack_coefficients, refusal
from .inputs import initial_weights
from .triton_host import custom_op, split_state
from .wy_chunk import dot_dtype

HIDDEN_TILE = 32  # hidden units per pass through the chip: six [64 x 32] tiles live at once


class KlChunk:
    """The kernel of one spec as a `torch.library` op without an autograd formula; the
    generated backend passes its forward kernel, the memory's weight shapes, its chunk and
    what a missing initial state means."""

    def __init__(self, namespace: str, kernel, *, shapes: Callable, chunk: int,
                 required_state: str):  # fmt: skip
        self.kernel, self.shapes, self.chunk = kernel, shapes, chunk
        self.required_state = required_state
        self.min_tokens = MIN_TOKENS
        self.op = custom_op(f"{namespace}_kl", lambda: self._register(f"{namespace}_kl"))

    def unsupported(self, q: Tensor, v: Tensor, chunk_offset: int, tensors) -> str | None:
        """Why this call does not run on the chunked kernel, or None; `tensors` are every
        other input a gradient could flow to (gates, initial state, LayerNorm's parameters)."""
        if torch.is_grad_enabled() and any(
            isinstance(t, Tensor) and t.requires_grad for t in (q, v, *tensors)
        ):
            return "a gradient is needed: the chunked kl kernel has no backward pass yet"
        return refusal(q, v, chunk_offset, self.min_tokens)

    def meta(self, Dk: int, Dv: int, dot) -> dict:
        """The kernel's compile-time constants (`dot`: the matmul operands' dtype)."""
        hidden = self.shapes(Dk, Dv)[0][1]
        BE = max(16, min(HIDDEN_TILE, _pow2(hidden)))
        return dict(DK=Dk, DV=Dv, HID=hidden, BK=_pow2(Dk), BV=_pow2(Dv), BE=BE, BT=self.chunk,
                    DOT=dot)  # fmt: skip

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps, as the MLP memories' chunked kernels."""
        return dict(num_warps=8, num_stages=1)

    def launch(self, q, k, v, coef, d, params, state, ln, scale: float) -> tuple[Tensor, Tensor]:
        """(o, the final state flat as `state`)."""
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
        final = state.clone()  # the kernel updates the state in place
        NT = coef.shape[-1] // self.chunk
        meta = self.meta(Dk, Dv, dot_dtype(q.dtype))
        self.kernel[(B * H,)](
            q, k, v, coef, d, params, final, ln, o, scale, T, H, coef.shape[-1], NT,
            **meta, **self.launch_options(Dk, Dv),
        )  # fmt: skip
        return o, final

    def _register(self, namespace: str):
        """The kernel as a torch.library custom op (with a fake kernel, so that torch.compile
        traces through it)."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def kl_forward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, d: Tensor, params: Tensor,
            state: Tensor, ln: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor]:  # fmt: skip
            return self.launch(q, k, v, coef, d, params, state, ln, scale)

        @kl_forward.register_fake
        def _(q, k, v, coef, d, params, state, ln, scale):
            return q.new_empty((*q.shape[:3], v.shape[-1])), state.new_empty(state.shape)

        return kl_forward

    def forward(
        self, q, k, v, lr, rate, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked kernel,
        for gates lr, rate (the keep gate) and the loss's gate parameters, each [B, H, T];
        `ln_weight`, `ln_bias` [H, Dv] (default 1 and 0) when the memory has a LayerNorm. A
        call continuing a chunk, or one that needs a gradient, is not taken (`unsupported`)."""
        others = (k, lr, rate, *params, *(initial_state or ()), ln_weight, ln_bias)
        reason = self.unsupported(q, v, chunk_offset, others)
        if reason is not None:
            raise BackendError(reason)
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        shapes = self.shapes(Dk, Dv)
        states = initial_weights(initial_state, shapes, 2, q, self.required_state)
        per_token, _, d, stacked = pack_coefficients(
            "kl", False, self.chunk, lr, rate, None, params
        )
        flat = torch.cat([s.reshape(B * H, -1).float() for s in states], dim=-1).contiguous()
        ln = layer_norm_params(ln_weight, ln_bias, H, Dv, q.device)
        o, final = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), per_token[0].contiguous(), d,
            stacked, flat, ln, float(scale),
        )  # fmt: skip
        if not output_final_state:
            return o, None
        return o, split_state(final, shapes, 2, B, H)
