"""The host side of the chunked dual-form Triton kernels of a linear memory (a generated
`triton_backend.py` supplies the three kernels, printed with its loss). Per chunk of C tokens
every gradient is taken at the chunk's start state W (its anchor), G = dl/dy(K W, V), and with
the chunk's coefficients (runtime.chunked.coefficients, the torch backend's own: products of the
gates, exact with zero gates):
    O  = a (x W) + b (x S) - (D * x K^T) G
    W' = aC W + bC S - K^T (Dl G),   S' = hC S - K^T (Dm G)     (S, b, bC, hC, Dm: momentum)
The kernels take the coefficients and return their adjoints; autograd carries those to the
gates. Activation memory: the state at each chunk's start (ceil(T / C) |state| floats per
(batch, head)) and the coefficients (C + 4 floats per token), nothing else per token beyond
the inputs.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from ..errors import BackendError
from .chunked import chunk_major, coefficients, factors
from .inputs import initial_weights
from .triton_host import custom_op, triton_interpreted
from .wy_chunk import dot_dtype

MAX_TILE = 128  # Dk and Dv are each one on-chip tile of at most this many columns (padded)
VALUE_TILE = 64  # value columns per program of the sequential kernels, for coordinate-wise losses
MIN_TOKENS = 64  # shorter calls (decoding) are cheaper on the recurrent kernels


def _pow2(n: int) -> int:
    """The tile width for n columns: a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << max(0, (int(n) - 1).bit_length()))


def refusal(q: Tensor, v: Tensor, chunk_offset: int, min_tokens: int) -> str | None:
    """Why a call does not run on chunked dual-form kernels (linear or MLP memory), or None:
    they take calls of at least `min_tokens` tokens starting on a chunk boundary, in fp32,
    bf16 or fp16 on CUDA (or the interpreter), with key and value rows of at most MAX_TILE."""
    if q.shape[1] < min_tokens:
        return f"fewer than {min_tokens} tokens"
    if chunk_offset:
        return "the call continues a chunk (chunk_offset > 0)"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the chunked kernels take fp32, bf16 or fp16 inputs, not {q.dtype}"
    if not (q.is_cuda or triton_interpreted()):
        return "the chunked kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    if max(_pow2(q.shape[-1]), _pow2(v.shape[-1])) > MAX_TILE:
        return f"the chunked kernels hold key and value rows of at most {MAX_TILE} columns"
    return None


def pack_coefficients(retention: str, momentum: bool, C: int, lr, rate, mom, params: list,
                      offset: int = 0):  # fmt: skip
    """The chunked kernels' coefficients from gates [B, H, T] (rate None without a retention
    gate, mom None without momentum): per token a, b, Dl, Dm [4, B*H, N*C] (zeros where
    absent), per chunk end aC, bC, hC [3, B*H, N], D [B*H, N*C, C] and the loss's gate
    parameters [P, B*H, N*C] (past T, copies of the last real token's: finite surprises). A call
    continuing a chunk (`offset` > 0) is padded in front with `offset` no-op tokens."""
    B, H, T = lr.shape
    N = triton.cdiv(offset + T, C)
    pads = (offset, N * C - offset - T, C)
    keep, e = factors(retention, lr.float(), None if rate is None else rate.float())
    coef = coefficients(
        momentum,
        chunk_major(keep, *pads, value=1.0),
        chunk_major(e, *pads, value=0.0),
        chunk_major(mom.float(), *pads, value=1.0) if momentum else None,
        offset,
        (offset + T - 1) % C,
    )

    def tokens(x):  # [N, B, H, C, 1] -> [B*H, N*C]; absent (no momentum) -> zeros
        if x is None:
            return keep.new_zeros(B * H, N * C)
        return x.squeeze(-1).permute(1, 2, 0, 3).reshape(B * H, N * C)

    def chunk_ends(x):  # [N, B, H, 1, 1] -> [B*H, N]
        return keep.new_zeros(B * H, N) if x is None else x.reshape(N, B * H).t()

    per_token = torch.stack([tokens(coef[n]) for n in ("a", "b", "Dl", "Dm")])
    ends = torch.stack([chunk_ends(coef[n]) for n in ("aC", "bC", "hC")])
    d = coef["D"].permute(1, 2, 0, 3, 4).reshape(B * H, N * C, C)
    stacked = (
        torch.stack(
            [chunk_major(p.float(), *pads).movedim(0, 2).reshape(B * H, N * C) for p in params]
        )
        if params
        else keep.new_zeros((0, B * H, N * C))
    )
    return per_token.contiguous(), ends.contiguous(), d.contiguous(), stacked.contiguous()


def layer_norm_params(weight, bias, H: int, Dv: int, device) -> Tensor:
    """LayerNorm's gain and bias as the chunked kernels read them, [2, H, Dv] fp32 (1 and 0
    when not given: a memory without LayerNorm ignores them)."""
    f32 = dict(dtype=torch.float32, device=device)
    return torch.stack([
        torch.ones(H, Dv, **f32) if weight is None else weight.float(),
        torch.zeros(H, Dv, **f32) if bias is None else bias.float(),
    ]).contiguous()  # fmt: skip


class DualChunk:
    """The chunked dual-form kernels of one spec as a `torch.library` op pair with an autograd
    formula; the generated backend passes its three kernels (forward, the reverse state pass,
    the chunks' adjoints), chunk, retention kind, whether it has momentum, whether each value
    column stands on its own (a coordinate-wise loss, no LayerNorm, clip or lq: then the two
    sequential kernels split the value columns across programs) and whether it has a LayerNorm."""

    def __init__(self, namespace: str, kernels: tuple, *, chunk: int, retention: str,
                 momentum: bool, coordinatewise: bool, layer_norm: bool):  # fmt: skip
        self.forward_kernel, self.state_bwd_kernel, self.chunk_bwd_kernel = kernels
        self.chunk, self.retention, self.layer_norm = chunk, retention, layer_norm
        self.momentum, self.n_states = momentum, 2 if momentum else 1
        self.coordinatewise = coordinatewise
        self.min_tokens = MIN_TOKENS  # benchmarks raise it to time the recurrent kernels alone
        self.op = custom_op(f"{namespace}_dual", lambda: self._register(f"{namespace}_dual"))

    def unsupported(self, q: Tensor, v: Tensor, chunk_offset: int = 0) -> str | None:
        """Why this call does not run on the chunked kernels, or None."""
        return refusal(q, v, chunk_offset, self.min_tokens)

    def value_tile(self, kernel, Dv: int) -> int:
        """Value columns per program: a tile for the sequential kernels (forward, reverse state
        pass) under a coordinate-wise loss, else all of them."""
        whole = _pow2(Dv)
        if self.coordinatewise and kernel is not self.chunk_bwd_kernel:
            return min(VALUE_TILE, whole)
        return whole

    def meta(self, kernel, Dk: int, Dv: int, dot) -> dict:
        """`kernel`'s compile-time constants (`dot`: the matmul operands' dtype)."""
        BV = self.value_tile(kernel, Dv)
        return dict(DK=Dk, DV=Dv, BK=_pow2(Dk), BV=BV, BT=self.chunk, DOT=dot)

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps: the fewest with no spills at Dk = Dv = 64 on sm_90
        (benchmarks/gpu_static.py)."""
        return dict(num_warps=8, num_stages=1)

    def _launch(self, kernel, grid: tuple, args: tuple, q: Tensor, v: Tensor) -> None:
        """`kernel` on `grid`; a grid of one (batch, head) axis gains the value-tile axis."""
        Dk, Dv = q.shape[-1], v.shape[-1]
        if len(grid) == 1:
            grid = (triton.cdiv(Dv, self.value_tile(kernel, Dv)), *grid)
        kernel[grid](*args, **self.meta(kernel, Dk, Dv, dot_dtype(q.dtype)),
                     **self.launch_options(Dk, Dv))  # fmt: skip

    def launch_forward(self, q, k, v, coef, ends, d, params, ln, h0, scale: float):
        B, T, H, Dk = q.shape
        Dv, (_, BH, TP), NT = v.shape[-1], coef.shape, ends.shape[-1]
        f32 = dict(dtype=torch.float32, device=q.device)
        o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
        hs = torch.empty((self.n_states, BH, NT, Dk, Dv), **f32)
        final = torch.empty((self.n_states, BH, Dk, Dv), **f32)
        args = (q, k, v, coef, ends, d, params, ln, h0, o, hs, final, scale, T, H, TP, NT)
        self._launch(self.forward_kernel, (BH,), args, q, v)
        return o, final, hs

    def launch_backward(self, q, k, v, coef, ends, d, params, ln, hs, do, dfinal, scale: float):
        """The reverse state pass (sequential over chunks: each chunk end's state adjoint),
        then every chunk's token and coefficient adjoints (and LayerNorm's gain and bias
        adjoints, summed here over chunks and batch) in parallel."""
        T, H, Dk = q.shape[1:]
        Dv, (_, BH, TP), NT = v.shape[-1], coef.shape, ends.shape[-1]
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.empty(t.shape, **f32) for t in (q, k, v))
        # zeros: without momentum the kernels leave its coefficients' rows unwritten
        dcoef, dends, dd = torch.zeros_like(coef), torch.zeros_like(ends), torch.empty_like(d)
        dparams, dhs = torch.empty_like(params), torch.empty_like(hs)
        dh0 = torch.empty((self.n_states, BH, Dk, Dv), **f32)
        dln = torch.zeros((2, NT, BH, Dv) if self.layer_norm else (1,), **f32)  # per chunk
        self._launch(self.state_bwd_kernel, (BH,),
                     (q, k, v, coef, ends, d, params, ln, hs, do, dfinal, dhs, dh0, scale, T, H,
                      TP, NT), q, v)  # fmt: skip
        self._launch(self.chunk_bwd_kernel, (NT, BH),
                     (q, k, v, coef, ends, d, params, ln, hs, dhs, do, dq, dk, dv, dcoef, dends,
                      dd, dparams, dln, scale, T, H, TP, NT), q, v)  # fmt: skip
        dln = (
            dln.sum(1).view(2, q.shape[0], H, Dv).sum(1)
            if self.layer_norm
            else torch.zeros_like(ln)
        )
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dcoef, dends, dd, dparams, dh0,
                dln)  # fmt: skip

    def _register(self, namespace: str):
        """The pair as torch.library custom ops (fake kernels included, so that torch.compile
        traces through them) with a registered autograd formula."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def dual_forward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, ends: Tensor, d: Tensor,
            params: Tensor, ln: Tensor, h0: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_forward(q, k, v, coef, ends, d, params, ln, h0, scale)

        @dual_forward.register_fake
        def _(q, k, v, coef, ends, d, params, ln, h0, scale):
            B, T, H, _ = q.shape
            n, BH, *state = h0.shape
            return (q.new_empty((B, T, H, v.shape[-1])), h0.new_empty(h0.shape),
                    h0.new_empty((n, BH, ends.shape[-1], *state)))  # fmt: skip

        @torch.library.custom_op(f"{namespace}::backward", mutates_args=())
        def dual_backward(
            q: Tensor, k: Tensor, v: Tensor, coef: Tensor, ends: Tensor, d: Tensor,
            params: Tensor, ln: Tensor, hs: Tensor, do: Tensor, dfinal: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_backward(q, k, v, coef, ends, d, params, ln, hs, do, dfinal, scale)

        @dual_backward.register_fake
        def _(q, k, v, coef, ends, d, params, ln, hs, do, dfinal, scale):
            return (*(t.new_empty(t.shape) for t in (q, k, v, coef, ends, d, params)),
                    dfinal.new_empty(dfinal.shape), ln.new_empty(ln.shape))  # fmt: skip

        def setup_context(ctx, inputs, output):
            q, k, v, coef, ends, d, params, ln, _, scale = inputs
            ctx.save_for_backward(q, k, v, coef, ends, d, params, ln, output[2])
            ctx.scale = scale

        def backward(ctx, do, dfinal, _dhs):
            q, k, v, coef, ends, d, params, ln, hs = ctx.saved_tensors
            do = q.new_zeros((*q.shape[:3], v.shape[-1])) if do is None else do.contiguous()
            dfinal = hs.new_zeros((*hs.shape[:2], *hs.shape[3:])) if dfinal is None else dfinal
            dq, dk, dv, dcoef, dends, dd, dparams, dh0, dln = dual_backward(
                q, k, v, coef, ends, d, params, ln, hs, do, dfinal.contiguous(), ctx.scale
            )
            return dq, dk, dv, dcoef, dends, dd, dparams, dln, dh0, None

        dual_forward.register_autograd(backward, setup_context=setup_context)
        return dual_forward

    def forward(
        self, q, k, v, lr, rate, mom, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked
        kernels, for gates lr, rate (None without a retention gate), mom (None without
        momentum) and the loss's gate parameters, each [B, H, T]; `ln_weight`, `ln_bias`
        [H, Dv] (default 1 and 0) when the memory has a LayerNorm. A call continuing a chunk
        (chunk_offset > 0) is not taken (`unsupported`), so `anchor_state` plays no part."""
        reason = self.unsupported(q, v, chunk_offset)
        if reason is not None:
            raise BackendError(reason)
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        states = initial_weights(initial_state, [(Dk, Dv)], self.n_states, q, "")
        per_token, ends, d, stacked = pack_coefficients(
            self.retention, self.momentum, self.chunk, lr, rate, mom, params
        )
        h0 = torch.stack([s.reshape(B * H, Dk, Dv).float() for s in states])
        ln = layer_norm_params(ln_weight, ln_bias, H, Dv, q.device)
        o, final, _ = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), per_token, ends, d, stacked, ln,
            h0.contiguous(), float(scale),
        )  # fmt: skip
        if not output_final_state:
            return o, None
        return o, tuple(f.reshape(B, H, Dk, Dv) for f in final)
