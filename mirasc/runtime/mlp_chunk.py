"""The host side of the chunked dual-form kernels of a two-layer MLP memory (a generated
`triton_backend.py` supplies the forward and backward kernels, printed with its loss and
activation). Per chunk every gradient is taken at the chunk's start state, so the reads, the
update and their reverses are tensor-core matmuls on [chunk x 64] tiles, with the chunk's
coefficients from the gates as in `dual_chunk` (exact with zero gates; autograd carries their
adjoints on to the gates). The state stays in global memory and passes through the chip one
tile of hidden units at a time. Activation memory: the state at each chunk's start
(ceil(T / C) |state| floats per (batch, head)), saved only when a gradient is needed. With lq
retention (MONETA) the state is A, read as W = A / ||A||_q^(q-2), and the kernels also keep
sum |A|^q of every saved state and of the final one (`ns`), which the backward pass reads.

With autograd the forward pass is two kernels: the state pass (the surprise and the update,
each chunk's start state saved) one program per (batch, head), then every chunk's outputs at
once from the saved states, one program per chunk and (batch, head). The backward pass is three
kernels, shaped like flash-linear-attention's: what a chunk's reads contribute needs nothing of
the state's adjoint, so two kernels reverse every chunk's reads at once (one program per chunk
and (batch, head)) and leave a record per chunk (4 C·hidden + 3 C·Dv floats: the reads'
adjoints the state pass takes up); then the state pass walks the chunks in reverse, one program
per (batch, head), through the update's and the surprise's reverse only. Split so, no kernel
spills at Dk = Dv = 64 on sm_90; as one kernel the backward spilled (benchmarks/gpu_static.py,
docs/triton.md).

Calls without autograd (decoding, evaluation) take the forward kernel alone, reads included, at
any length, a call
continuing a chunk included (padded in front, its first chunk's surprise at the anchor): the
recurrent kernels hold the whole state per program, which does not fit in registers and
spills (tens of KB per thread at Dk = 64), where this kernel streams it a tile at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import BackendError
from .dual_chunk import MIN_TOKENS, _pow2, layer_norm_params, pack_coefficients, refusal
from .inputs import anchor_weights, initial_weights
from .triton_host import custom_op, split_state
from .wy_chunk import dot_dtype

HIDDEN_TILE = 64  # hidden units per pass through the chip; fewer for heads over 64
STATE_TILE = 64 * 64  # what a hidden tile's weight tiles hold at most (no spills on sm_90)


def flat_states(states, rows: int) -> Tensor:
    """State tensors [B, H, ..] side by side as the kernels read them, [B*H = rows, total]
    fp32."""
    return torch.cat([s.reshape(rows, -1).float() for s in states], dim=-1).contiguous()


def anchor_and_save(anchors, flat: Tensor, inputs: tuple, chunk_offset: int):
    """The flat anchor of a continued chunk (empty when the call starts a chunk) and whether
    the forward pass must save states for autograd; a continued chunk takes no gradient."""
    anchor = flat.new_empty(0) if anchors is None else flat_states(anchors, flat.shape[0])
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, anchor))
    if save and chunk_offset:
        raise BackendError(
            "the chunked kernels take a call continuing a chunk without autograd only"
        )
    return anchor, save


class MlpChunk:
    """The kernels of one spec as a `torch.library` op pair with an autograd formula; the
    generated backend passes its forward kernel and its backward pass's (see the module's
    docstring), the memory's weight shapes, chunk, retention kind, whether it has momentum and
    what its missing initial state means (`required_state`, "" if zeros are fine)."""

    def __init__(self, namespace: str, kernels: tuple, *, shapes: Callable, chunk: int,
                 retention: str, momentum: bool, required_state: str):  # fmt: skip
        # forward, the reads' backward kernels (parallel over chunks; a deep memory's backward
        # has none), the state pass (sequential over chunks)
        self.forward_kernel, *self.reads_kernels, self.backward_kernel = kernels
        self.shapes, self.chunk = shapes, chunk
        self.retention, self.momentum = retention, momentum
        self.depth = len(shapes(1, 1))  # weight matrices: layers
        self.n_states = 2 * self.depth if momentum else self.depth
        self.lq = retention == "lq"
        self.required_state = required_state
        self.min_tokens = MIN_TOKENS  # benchmarks raise it to time the recurrent kernels alone
        self.streaming = True  # calls without autograd: any length and offset (benchmarks: off)
        self.op = custom_op(f"{namespace}_mlp", lambda: self._register(f"{namespace}_mlp"))

    def unsupported(self, q: Tensor, v: Tensor, chunk_offset: int = 0) -> str | None:
        """Why this call does not run on the chunked kernels, or None: with autograd, calls
        of at least `min_tokens` tokens starting on a chunk boundary; without it (`streaming`),
        any call."""
        if self.streaming and not torch.is_grad_enabled():
            return refusal(q, v, 0, 1)
        return refusal(q, v, chunk_offset, self.min_tokens)

    def meta(self, Dk: int, Dv: int, dot, backward: bool = False) -> dict:
        """A kernel's compile-time constants (`dot`: the matmul operands' dtype); the backward
        kernel holds twice the tiles per hidden tile, so its tiles are half as wide."""
        hidden = self.shapes(Dk, Dv)[0][1]
        BK, BV = _pow2(Dk), _pow2(Dv)
        limit = STATE_TILE // (4 if backward else 1)
        BE = max(16, min(HIDDEN_TILE, limit // max(BK, BV), _pow2(hidden)))
        return dict(DK=Dk, DV=Dv, HID=hidden, BK=BK, BV=BV, BE=BE, BT=self.chunk, DOT=dot)

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps: 4 spill at Dk = Dv = 64 on sm_90 (benchmarks/gpu_static.py)."""
        return dict(num_warps=8, num_stages=1)

    def _launch(self, kernel, args: tuple, q: Tensor, v: Tensor, grid: tuple = (),
                backward: bool | None = None, **extra):  # fmt: skip
        """`kernel` over `grid` x (batch x head) programs with its constants: the backward
        pass's (narrower tiles), by default for any kernel but the forward one."""
        Dk, Dv, BH = q.shape[-1], v.shape[-1], q.shape[0] * q.shape[2]
        backward = kernel is not self.forward_kernel if backward is None else backward
        meta = self.meta(Dk, Dv, dot_dtype(q.dtype), backward)
        kernel[(*grid, BH)](*args, **meta, **self.launch_options(Dk, Dv), **extra)

    def _sums_shape(self, BH: int, NT: int) -> tuple:
        """lq: sum |A_l|^q of each layer at every chunk's start and at the end."""
        return (BH, NT + 1, self.depth) if self.lq else (1,)

    def forward_buffers(self, q, v, state, NT: int, save: bool) -> tuple:
        """What the forward kernel writes: o, the final state (the kernel updates a copy of
        `state` in place), the state at each chunk's start [BH, NT, ..] when `save` (else
        empty) and the lq sums (see `_sums_shape`)."""
        B, T, H, _ = q.shape
        o = torch.empty((B, T, H, v.shape[-1]), dtype=q.dtype, device=q.device)
        hs = state.new_empty((state.shape[0], NT, state.shape[1]) if save else (0,))
        return o, state.clone(), hs, state.new_zeros(self._sums_shape(state.shape[0], NT))

    @staticmethod
    def backward_buffers(q, k, v, coef, ends, d, params, dfinal) -> tuple:
        """What the backward kernels write: the adjoints of q, k, v (fp32), the coefficients
        (zeros: rows a spec lacks stay unwritten, D's gathers per layer), the loss's gates, the
        state (the final state's on entry, updated in place) and LayerNorm's [2, BH, Dv]."""
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.empty(t.shape, **f32) for t in (q, k, v))
        dcoef, dends, dd = torch.zeros_like(coef), torch.zeros_like(ends), torch.zeros_like(d)
        dln = torch.zeros((2, q.shape[0] * q.shape[2], v.shape[-1]), **f32)
        return dq, dk, dv, dcoef, dends, dd, torch.empty_like(params), dfinal.clone(), dln

    @staticmethod
    def backward_results(q, k, v, grads: tuple) -> tuple:
        """`backward_buffers` after the kernel: q, k, v's adjoints in their dtypes and
        LayerNorm's summed over the batch, [2, H, Dv]."""
        dq, dk, dv, *rest, dln = grads
        B, H = q.shape[0], q.shape[2]
        dln = dln.view(2, B, H, -1).sum(1)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *rest, dln)

    def launch_forward(self, q, k, v, coef, ends, d, params, state, anchor, ln, scale: float,
                       save: bool, offset: int):  # fmt: skip
        """`forward_buffers` filled. With `offset` the call continues a chunk whose weights
        were `anchor` [BH, |weights|]."""
        NT = ends.shape[-1]
        o, final, hs, ns = out = self.forward_buffers(q, v, state, NT, save)
        sizes = (q.shape[1], q.shape[2], coef.shape[-1], NT)
        args = (q, k, v, coef, ends, d, params, final, anchor, ln, o, hs, ns, scale, *sizes, offset)
        # training: the sequential kernel only updates and saves the state, and the reads kernel
        # makes every chunk's outputs from the saved states at once
        self._launch(self.forward_kernel, args, q, v, SAVE=save, CONT=offset > 0, READS=not save)
        if save:
            none = q.new_empty(0)  # the backward pass's buffers, which the outputs do not take
            args = (q, k, v, coef, d, params, hs, ns, final, ln, o, none, none, none, none, none)
            self._launch(self.reads_kernels[0], (*args, scale, *sizes), q, v, grid=(NT,),
                         OUTPUT=True)  # fmt: skip
        return out

    def launch_backward(self, q, k, v, coef, ends, d, params, hs, ns, final, ln, do, dfinal,
                        scale: float):  # fmt: skip
        """Three kernels: the reverse of every chunk's reads at once in two (one program per
        chunk and (batch, head)), which leave a record per chunk, then the chunks in reverse,
        one program per (batch, head), carrying the state's adjoint: the adjoints of the inputs,
        coefficients, loss gates, initial state and LayerNorm's gain and bias."""
        grads = self.backward_buffers(q, k, v, coef, ends, d, params, dfinal)
        dq, dk, dv, dcoef, dends, dd, dparams, dstate, dln = grads
        Dk, Dv = q.shape[-1], v.shape[-1]
        hidden = self.shapes(Dk, Dv)[0][1]
        BH, NT, C = q.shape[0] * q.shape[2], ends.shape[-1], self.chunk
        f32 = dict(dtype=torch.float32, device=q.device)
        record = q.new_empty((BH, NT, 4 * C * hidden + 3 * C * Dv), **f32)
        sums = q.new_zeros((BH, NT, 2 * Dv + 2), **f32)  # LayerNorm's adjoints, lq's x1, x2
        sizes = (q.shape[1], q.shape[2], coef.shape[-1], NT)
        reads, reads_back = self.reads_kernels
        args = (q, k, v, coef, d, params, hs, ns, final, ln, q.new_empty(0), do, record, sums, dcoef,
                dd, scale)  # fmt: skip
        self._launch(reads, (*args, *sizes), q, v, grid=(NT,), OUTPUT=False)
        args = (q, k, coef, d, params, hs, ns, do, record, sums, dq, dk, dcoef, dd, scale)
        self._launch(reads_back, (*args, *sizes), q, v, grid=(NT,))
        args = (q, k, v, coef, ends, params, hs, ns, final, ln, do, dstate, record, sums, dq, dk,
                dv, dcoef, dends, dparams, dln, scale)  # fmt: skip
        self._launch(self.backward_kernel, (*args, *sizes), q, v)
        dln += sums[..., : 2 * Dv].view(BH, NT, 2, Dv).sum(1).transpose(0, 1)
        return self.backward_results(q, k, v, grads)

    def _register(self, namespace: str):
        """The pair as torch.library custom ops (fake kernels included, so that torch.compile
        traces through them) with a registered autograd formula."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def mlp_forward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, ends: Tensor, d: Tensor,
            params: Tensor, state: Tensor, anchor: Tensor, ln: Tensor, scale: float, save: bool,
            offset: int,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_forward(
                q, k, v, coef, ends, d, params, state, anchor, ln, scale, save, offset
            )

        @mlp_forward.register_fake
        def _(q, k, v, coef, ends, d, params, state, anchor, ln, scale, save, offset):
            NT = ends.shape[-1]
            hs = (state.shape[0], NT, state.shape[1]) if save else (0,)
            return (q.new_empty((*q.shape[:3], v.shape[-1])), state.new_empty(state.shape),
                    state.new_empty(hs), state.new_empty(self._sums_shape(state.shape[0], NT)))  # fmt: skip

        @torch.library.custom_op(f"{namespace}::backward", mutates_args=())
        def mlp_backward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, ends: Tensor, d: Tensor,
            params: Tensor, hs: Tensor, ns: Tensor, final: Tensor, ln: Tensor, do: Tensor,
            dfinal: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_backward(
                q, k, v, coef, ends, d, params, hs, ns, final, ln, do, dfinal, scale
            )

        @mlp_backward.register_fake
        def _(q, k, v, coef, ends, d, params, hs, ns, final, ln, do, dfinal, scale):
            return (*(t.new_empty(t.shape) for t in (q, k, v, coef, ends, d, params)),
                    dfinal.new_empty(dfinal.shape), ln.new_empty(ln.shape))  # fmt: skip

        def setup_context(ctx, inputs, output):
            q, k, v, coef, ends, d, params, _, _, ln, scale, _, _ = inputs
            _, final, hs, ns = output
            # the final state: only lq's backward pass reads it (its last chunk's end read)
            ctx.save_for_backward(q, k, v, coef, ends, d, params, ln, hs, ns,
                                  final if self.lq else ns)  # fmt: skip
            ctx.scale = scale

        def backward(ctx, do, dfinal, _dhs, _dns):
            q, k, v, coef, ends, d, params, ln, hs, ns, final = ctx.saved_tensors
            do = q.new_zeros((*q.shape[:3], v.shape[-1])) if do is None else do.contiguous()
            if dfinal is None:
                dfinal = hs.new_zeros((hs.shape[0], hs.shape[2]))
            grads = mlp_backward(
                q,
                k,
                v,
                coef,
                ends,
                d,
                params,
                hs,
                ns,
                final,
                ln,
                do,
                dfinal.contiguous(),
                ctx.scale,
            )
            # a continued chunk's call has no gradient (see `forward`): no anchor adjoint
            return (*grads[:8], None, grads[8], None, None, None)

        mlp_forward.register_autograd(backward, setup_context=setup_context)
        return mlp_forward

    def forward(
        self, q, k, v, lr, rate, mom, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked
        forward kernel, for gates lr, rate (None without a retention gate), mom (None without
        momentum) and the loss's gate parameters, each [B, H, T]; `ln_weight`, `ln_bias`
        [H, Dv] (default 1 and 0) when the memory has a LayerNorm. A call continuing a chunk
        (`chunk_offset` > 0, its gradients at `anchor_state`) takes no gradient."""
        reason = self.unsupported(q, v, chunk_offset)
        if reason is not None:
            raise BackendError(reason)
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        shapes = self.shapes(Dk, Dv)
        states = initial_weights(initial_state, shapes, self.n_states, q, self.required_state)
        anchors = anchor_weights(
            anchor_state, chunk_offset, self.chunk, shapes, q, self.required_state
        )
        per_token, ends, d, stacked = pack_coefficients(
            self.retention, self.momentum, self.chunk, lr, rate, mom, params, chunk_offset
        )
        flat = flat_states(states, B * H)
        ln = layer_norm_params(ln_weight, ln_bias, H, Dv, q.device)
        inputs = (q, k, v, per_token, ends, d, stacked, flat, ln)
        anchor, save = anchor_and_save(anchors, flat, inputs, chunk_offset)
        o, final, _, _ = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), per_token, ends, d, stacked, flat,
            anchor, ln, float(scale), save, chunk_offset,
        )  # fmt: skip
        if not output_final_state:
            return o, None
        return o, split_state(final, shapes, self.n_states, B, H)
