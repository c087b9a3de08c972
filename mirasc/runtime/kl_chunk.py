"""The host side of the chunked kernels of a linear or two-layer MLP memory under kl retention
(MEMORA; a generated `triton_backend.py` supplies the forward and backward kernels, printed
with its loss and activation). Per chunk every gradient is taken at the chunk's start state,
so each layer's logits are the anchor's plus tensor-core products of the chunk's rank-one
factors, and every token's own state is a row softmax of them (the torch backend's
`chunked_kl`). An MLP's state stays in global memory and passes through the chip a tile of
hidden units at a time; a linear memory's a tile of whole rows at a time (BE rows).

In training (the chunk-start states saved) an MLP's forward pass is two kernels: the
sequential one writes only each chunk's end state (its last token's softmax), and the output
kernel makes every chunk's reads at once from the saved states.

The backward kernel walks the chunks in reverse from the state saved at each chunk's start
(ceil(T / C) |state| floats per (batch, head), saved only when a gradient is needed),
recomputing each chunk's passes, and goes back through every token's row softmax, the logits'
rank-one factors and the surprise's second-order pieces to the inputs, the coefficients
(autograd takes them on to the gates), the initial state and LayerNorm's gain and bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import BackendError
from .dual_chunk import MIN_TOKENS, _pow2, layer_norm_params, pack_coefficients
from .inputs import anchor_weights, initial_weights
from .mlp_chunk import MlpChunk, anchor_and_save, flat_states
from .triton_host import custom_op, split_state

HIDDEN_TILE = 32  # hidden units per pass through the chip; half that in the backward kernel


class KlChunk(MlpChunk):
    """The kernels of one spec as a `torch.library` op pair with an autograd formula; the
    generated backend passes its forward kernels (an MLP's: two, see the module docstring) and
    its backward kernel, the memory's weight shapes, its
    chunk and what a missing initial state means. The limits, launch settings and launches are
    MlpChunk's; kl retention has no momentum."""

    def __init__(self, namespace: str, kernels: tuple, *, shapes: Callable, chunk: int,
                 required_state: str):  # fmt: skip
        # forward, [an MLP's training outputs: every chunk at once after the state pass,] backward
        self.forward_kernel, *outputs, self.backward_kernel = kernels
        self.output_kernel = outputs[0] if outputs else None
        self.shapes, self.chunk = shapes, chunk
        self.required_state = required_state
        self.min_tokens = MIN_TOKENS  # benchmarks raise it to time the recurrent kernels alone
        # calls without autograd at any length and offset: an MLP's (its recurrent kernels
        # spill); a linear memory's [Dk, Dv] state fits the recurrent kernels, which decode it
        self.streaming = len(shapes(1, 1)) > 1
        self.op = custom_op(f"{namespace}_kl", lambda: self._register(f"{namespace}_kl"))

    def meta(self, Dk: int, Dv: int, dot, backward: bool = False) -> dict:
        """A kernel's compile-time constants (`dot`: the matmul operands' dtype); the backward
        kernel holds more tiles per hidden tile, so its tiles are half as wide (on sm_90 at
        D = 64: 560 B of spills per thread with 32, 260 B with 16; the forward kernel spills
        nothing with 32). A linear memory's kernels take BE rows of the state per tile."""
        hidden = self.shapes(Dk, Dv)[0][1]
        BE = max(16, min(HIDDEN_TILE // (2 if backward else 1), _pow2(hidden)))
        return dict(DK=Dk, DV=Dv, HID=hidden, BK=_pow2(Dk), BV=_pow2(Dv), BE=BE, BT=self.chunk,
                    DOT=dot)  # fmt: skip

    def launch_forward(self, q, k, v, coef, d, params, state, anchor, ln, scale: float,
                       save: bool, offset: int):  # fmt: skip
        """(o, the final state flat as `state`, the state at each chunk's start [BH, NT, ..]
        when `save`, else an empty tensor). With `offset` the call continues a chunk whose
        weights were `anchor` [BH, |state|]."""
        B, T, H, _ = q.shape
        NT = coef.shape[-1] // self.chunk
        o = torch.empty((B, T, H, v.shape[-1]), dtype=q.dtype, device=q.device)
        final = state.clone()  # the kernel updates the state in place
        hs = state.new_empty((state.shape[0], NT, state.shape[1]) if save else (0,))
        args = (q, k, v, coef, d, params, final, anchor, ln, o, hs, *self.forward_scratch(q, v),
                scale, T, H, coef.shape[-1], NT, offset)  # fmt: skip
        if self.output_kernel is None:
            self._launch(self.forward_kernel, args, q, v, SAVE=save, CONT=offset > 0)
            return o, final, hs
        # training: the sequential kernel only writes each chunk's end state, and the output
        # kernel makes every chunk's outputs from the saved states at once
        self._launch(self.forward_kernel, args, q, v, SAVE=save, CONT=offset > 0, READS=not save)
        if save:
            args = (q, k, v, coef, d, params, hs, ln, o, scale, T, H, coef.shape[-1], NT)
            self._launch(self.output_kernel, args, q, v, grid=(NT,), backward=False)
        return o, final, hs

    def forward_scratch(self, q, v) -> tuple:
        """The forward kernel's work buffers: none (it walks the state in place)."""
        return ()

    def backward_scratch(self, q, v) -> torch.Tensor:
        """Per (batch, head), per chunk: Zq1 and three adjoints of the hidden rows."""
        hidden = self.shapes(q.shape[-1], v.shape[-1])[0][1]
        return q.new_empty((q.shape[0] * q.shape[2], 4, self.chunk, hidden), dtype=torch.float32)

    def launch_backward(self, q, k, v, coef, d, params, hs, ln, do, dfinal, scale: float):
        """The chunks in reverse, one program per (batch, head): the adjoints of the inputs,
        the coefficients, the loss's gates, the initial state and LayerNorm's gain and bias."""
        B, T, H, _ = q.shape
        TP, NT, f32 = coef.shape[-1], hs.shape[1], dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.empty(t.shape, **f32) for t in (q, k, v))
        dcoef, dd, dparams = torch.empty_like(coef), torch.empty_like(d), torch.empty_like(params)
        dstate = dfinal.clone()  # updated in place
        dln = torch.zeros((2, B * H, v.shape[-1]), **f32)
        scratch = self.backward_scratch(q, v)
        args = (q, k, v, coef, d, params, hs, ln, do, dstate, scratch, dq, dk, dv, dcoef, dd,
                dparams, dln, scale, T, H, TP, NT)  # fmt: skip
        self._launch(self.backward_kernel, args, q, v)
        dln = dln.view(2, B, H, -1).sum(1)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dcoef, dd, dparams, dstate, dln)

    def _register(self, namespace: str):
        """The pair as torch.library custom ops (fake kernels included, so that torch.compile
        traces through them) with a registered autograd formula."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def kl_forward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, d: Tensor, params: Tensor,
            state: Tensor, anchor: Tensor, ln: Tensor, scale: float, save: bool, offset: int,
        ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_forward(
                q, k, v, coef, d, params, state, anchor, ln, scale, save, offset
            )

        @kl_forward.register_fake
        def _(q, k, v, coef, d, params, state, anchor, ln, scale, save, offset):
            NT = coef.shape[-1] // self.chunk
            hs = (state.shape[0], NT, state.shape[1]) if save else (0,)
            return (q.new_empty((*q.shape[:3], v.shape[-1])), state.new_empty(state.shape),
                    state.new_empty(hs))  # fmt: skip

        @torch.library.custom_op(f"{namespace}::backward", mutates_args=())
        def kl_backward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, d: Tensor, params: Tensor,
            hs: Tensor, ln: Tensor, do: Tensor, dfinal: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_backward(q, k, v, coef, d, params, hs, ln, do, dfinal, scale)

        @kl_backward.register_fake
        def _(q, k, v, coef, d, params, hs, ln, do, dfinal, scale):
            return (*(t.new_empty(t.shape) for t in (q, k, v, coef, d, params)),
                    dfinal.new_empty(dfinal.shape), ln.new_empty(ln.shape))  # fmt: skip

        def setup_context(ctx, inputs, output):
            q, k, v, coef, d, params, _, _, ln, scale, _, _ = inputs
            ctx.save_for_backward(q, k, v, coef, d, params, ln, output[2])
            ctx.scale = scale

        def backward(ctx, do, dfinal, _dhs):
            q, k, v, coef, d, params, ln, hs = ctx.saved_tensors
            do = q.new_zeros((*q.shape[:3], v.shape[-1])) if do is None else do.contiguous()
            if dfinal is None:
                dfinal = hs.new_zeros((hs.shape[0], hs.shape[2]))
            grads = kl_backward(q, k, v, coef, d, params, hs, ln, do, dfinal.contiguous(),
                                ctx.scale)  # fmt: skip
            # a continued chunk's call has no gradient (see `forward`): no anchor adjoint
            return (*grads[:7], None, grads[7], None, None, None)

        kl_forward.register_autograd(backward, setup_context=setup_context)
        return kl_forward

    def forward(
        self, q, k, v, lr, rate, mom, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked
        kernels, for gates lr, rate (the keep gate), mom (None: kl takes no momentum) and the
        loss's gate parameters, each [B, H, T]; `ln_weight`, `ln_bias` [H, Dv] (default 1 and 0) when the memory has a
        LayerNorm. A call continuing a chunk (`chunk_offset` > 0, its gradients at
        `anchor_state`) takes no gradient."""
        reason = self.unsupported(q, v, chunk_offset)
        if reason is not None:
            raise BackendError(reason)
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        shapes = self.shapes(Dk, Dv)
        states = initial_weights(initial_state, shapes, len(shapes), q, self.required_state)
        anchors = anchor_weights(
            anchor_state, chunk_offset, self.chunk, shapes, q, self.required_state
        )
        per_token, _, d, stacked = pack_coefficients(
            "kl", False, self.chunk, lr, rate, None, params, chunk_offset
        )
        flat = flat_states(states, B * H)
        ln = layer_norm_params(ln_weight, ln_bias, H, Dv, q.device)
        coef = per_token[0].contiguous()
        anchor, save = anchor_and_save(anchors, flat, (q, k, v, coef, d, stacked, flat, ln),
                                       chunk_offset)  # fmt: skip
        o, final, _ = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), coef, d, stacked, flat, anchor, ln,
            float(scale), save, chunk_offset,
        )  # fmt: skip
        if not output_final_state:
            return o, None
        return o, split_state(final, shapes, len(shapes), B, H)
