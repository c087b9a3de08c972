"""The host side of the chunked dual-form Triton kernels of a linear memory (a generated
`triton_backend.py` supplies the two kernels, printed with its loss): per chunk of C tokens,
every token's gradient is taken at the chunk's start state W (its anchor),
G = dl/dy(K W, V), and with the in-chunk cumulative log of what the state keeps, gc, and the
step sizes e:
    O  = exp(gc) * (x W) - (Dm * x K^T) G,    Dm[t, s] = exp(gc_t - gc_s) e_s  (s <= t)
    W' = exp(gc_C) W - K^T (exp(gc_C - gc) e * G).
The kernels take e and gc (torch ops here, padded to whole chunks; autograd differentiates the
gates into them) and return their adjoints. Activation memory: the state at each chunk's start
(ceil(T / C) * Dk * Dv floats per (batch, head)), nothing per token beyond the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from ..errors import BackendError
from .inputs import initial_weights
from .triton_host import custom_op, triton_interpreted
from .wy_chunk import dot_dtype

MAX_TILE = 128  # Dk and Dv are each one on-chip tile of at most this many columns (padded)
MIN_TOKENS = 64  # calls at least this long take the chunked kernels; shorter ones (decoding)
# are cheaper on the recurrent kernels


def _pow2(n: int) -> int:
    """The tile width for n columns: a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << max(0, (int(n) - 1).bit_length()))


def _log_keep(keep: Tensor) -> Tensor:
    """log(keep) per token, a full forget (keep exactly 0) taken as e^-80 so that no -inf
    reaches the kernels; a negative keep has no logarithm: NaN, not a wrong value."""
    gone = keep == 0.0
    return torch.where(gone, -80.0, torch.log(torch.where(gone, 1.0, keep)))


def factors(retention: str, lr: Tensor, rate: Tensor | None) -> tuple[Tensor, Tensor]:
    """(what the state keeps, the step size) per token, [B, H, T], as in the torch backend's
    chunked dual form: none W - e g; decay (1 - rate) W - e g; l2 (W - lr g) / (1 + lr rate)."""
    if retention == "none":
        return torch.ones_like(lr), lr
    if retention == "decay":
        return 1.0 - rate, lr
    if retention == "l2":
        keep = 1.0 / (1.0 + lr * rate)
        return keep, lr * keep
    raise BackendError(f"the chunked dual-form kernels do not take {retention} retention")


class DualChunk:
    """The chunked dual-form kernels of one spec as a `torch.library` op pair with an autograd
    formula; the generated backend passes its three kernels (forward, the reverse state pass,
    the chunks' adjoints), chunk, retention kind and the number of its loss's gate
    parameters."""

    def __init__(self, namespace: str, kernels: tuple, *, chunk: int, retention: str,
                 n_params: int):  # fmt: skip
        self.forward_kernel, self.state_bwd_kernel, self.chunk_bwd_kernel = kernels
        self.chunk, self.retention, self.n_params = chunk, retention, n_params
        self.min_tokens = MIN_TOKENS  # benchmarks raise it to time the recurrent kernels alone
        self.op = custom_op(f"{namespace}_dual", lambda: self._register(f"{namespace}_dual"))

    def unsupported(self, q: Tensor, v: Tensor, chunk_offset: int = 0) -> str | None:
        """Why this call does not run on the chunked kernels, or None."""
        if q.shape[1] < self.min_tokens:
            return f"fewer than {self.min_tokens} tokens"
        if chunk_offset:
            return "the call continues a chunk (chunk_offset > 0)"
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"the chunked kernels take fp32, bf16 or fp16 inputs, not {q.dtype}"
        if not (q.is_cuda or triton_interpreted()):
            return "the chunked kernels need CUDA tensors (or TRITON_INTERPRET=1)"
        if max(_pow2(q.shape[-1]), _pow2(v.shape[-1])) > MAX_TILE:
            return f"the chunked kernels hold a state of at most {MAX_TILE} x {MAX_TILE}"
        return None

    def meta(self, Dk: int, Dv: int, dot) -> dict:
        """The kernels' compile-time constants (`dot`: the matmul operands' dtype)."""
        return dict(DK=Dk, DV=Dv, BK=_pow2(Dk), BV=_pow2(Dv), BT=self.chunk, DOT=dot)

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps: the fewest with no spills at Dk = Dv = 64 on sm_90
        (benchmarks/gpu_static.py)."""
        return dict(num_warps=8, num_stages=1)

    def _launch(self, kernel, grid: tuple, args: tuple, q: Tensor, v: Tensor) -> None:
        Dk, Dv = q.shape[-1], v.shape[-1]
        kernel[grid](*args, **self.meta(Dk, Dv, dot_dtype(q.dtype)),
                     **self.launch_options(Dk, Dv))  # fmt: skip

    def launch_forward(self, q, k, v, e, gc, params, h0, scale: float):
        B, T, H, Dk = q.shape
        Dv, (BH, TP) = v.shape[-1], e.shape
        NT = TP // self.chunk
        f32 = dict(dtype=torch.float32, device=q.device)
        o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
        hs = torch.empty((BH, NT, Dk, Dv), **f32)
        final = torch.empty((BH, Dk, Dv), **f32)
        self._launch(self.forward_kernel, (BH,),
                     (q, k, v, e, gc, params, h0, o, hs, final, scale, T, H, TP, NT), q, v)  # fmt: skip
        return o, final, hs

    def launch_backward(self, q, k, v, e, gc, params, hs, do, dfinal, scale: float):
        """The reverse state pass (sequential over chunks: each chunk end's state adjoint),
        then every chunk's token and gate adjoints in parallel."""
        T, H, Dk = q.shape[1:]
        Dv, (BH, TP), NT = v.shape[-1], e.shape, hs.shape[1]
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.empty(t.shape, **f32) for t in (q, k, v))
        de, dgc, dparams = torch.empty_like(e), torch.empty_like(gc), torch.empty_like(params)
        dhs, dh0 = torch.empty_like(hs), torch.empty((BH, Dk, Dv), **f32)
        self._launch(self.state_bwd_kernel, (BH,),
                     (q, k, v, e, gc, params, hs, do, dfinal, dhs, dh0, scale, T, H, TP, NT),
                     q, v)  # fmt: skip
        self._launch(self.chunk_bwd_kernel, (NT, BH),
                     (q, k, v, e, gc, params, hs, dhs, do, dq, dk, dv, de, dgc, dparams, scale,
                      T, H, TP, NT), q, v)  # fmt: skip
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), de, dgc, dparams, dh0

    def _register(self, namespace: str):
        """The pair as torch.library custom ops (fake kernels included, so that torch.compile
        traces through them) with a registered autograd formula."""

        @torch.library.custom_op(f"{namespace}::forward", mutates_args=())
        def dual_forward(
            q: Tensor, k: Tensor, v: Tensor, e: Tensor, gc: Tensor, params: Tensor, h0: Tensor,
            scale: float,
        ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_forward(q, k, v, e, gc, params, h0, scale)

        @dual_forward.register_fake
        def _(q, k, v, e, gc, params, h0, scale):
            B, T, H, _ = q.shape
            NT = e.shape[-1] // self.chunk
            return (q.new_empty((B, T, H, v.shape[-1])), h0.new_empty(h0.shape),
                    h0.new_empty((h0.shape[0], NT, *h0.shape[1:])))  # fmt: skip

        @torch.library.custom_op(f"{namespace}::backward", mutates_args=())
        def dual_backward(
            q: Tensor, k: Tensor, v: Tensor, e: Tensor, gc: Tensor, params: Tensor, hs: Tensor,
            do: Tensor, dfinal: Tensor, scale: float,
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
            return self.launch_backward(q, k, v, e, gc, params, hs, do, dfinal, scale)

        @dual_backward.register_fake
        def _(q, k, v, e, gc, params, hs, do, dfinal, scale):
            return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
                    e.new_empty(e.shape), gc.new_empty(gc.shape), params.new_empty(params.shape),
                    dfinal.new_empty(dfinal.shape))  # fmt: skip

        def setup_context(ctx, inputs, output):
            q, k, v, e, gc, params, _, scale = inputs
            ctx.save_for_backward(q, k, v, e, gc, params, output[2])
            ctx.scale = scale

        def backward(ctx, do, dfinal, _dhs):
            q, k, v, e, gc, params, hs = ctx.saved_tensors
            do = q.new_zeros((*q.shape[:3], v.shape[-1])) if do is None else do.contiguous()
            dfinal = hs.new_zeros((hs.shape[0], *hs.shape[2:])) if dfinal is None else dfinal
            grads = dual_backward(q, k, v, e, gc, params, hs, do, dfinal.contiguous(), ctx.scale)
            return (*grads, None)

        dual_forward.register_autograd(backward, setup_context=setup_context)
        return dual_forward

    def forward(
        self, q, k, v, lr, rate, params: list, *, scale, initial_state, output_final_state,
        ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0,
    ):  # fmt: skip
        """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked
        kernels, for gates lr, rate (None without a retention gate) and the loss's gate
        parameters, each [B, H, T]. A linear memory has no LayerNorm; a call continuing a
        chunk (chunk_offset > 0) is not taken (`unsupported`), so `anchor_state` plays no
        part."""
        reason = self.unsupported(q, v, chunk_offset)
        if reason is not None:
            raise BackendError(reason)
        if ln_weight is not None or ln_bias is not None:
            raise BackendError("a linear memory has no LayerNorm")
        B, T, H, Dk = q.shape
        Dv, C = v.shape[-1], self.chunk
        (state,) = initial_weights(initial_state, [(Dk, Dv)], 1, q, "")
        TP = triton.cdiv(T, C) * C
        keep, e = factors(self.retention, lr.float(), None if rate is None else rate.float())

        def rows(x: Tensor, mode: str = "constant") -> Tensor:  # [B, H, T] -> [B*H, TP]
            return F.pad(x, (0, TP - T), mode=mode).reshape(B * H, TP)

        log_keep = rows(_log_keep(keep))  # zero past T: gc keeps its last real value
        gc = log_keep.reshape(B * H, TP // C, C).cumsum(-1).reshape(B * H, TP)
        stacked = (
            torch.stack([rows(p.float(), "replicate") for p in params])
            if params
            else e.new_zeros((0, B * H, TP))
        )  # past T, the last real token's gates: finite surprises on padded rows
        o, final, _ = self.op(
            q.contiguous(), k.contiguous(), v.contiguous(), rows(e).contiguous(), gc.contiguous(),
            stacked.contiguous(), state.reshape(B * H, Dk, Dv).float().contiguous(), float(scale),
        )  # fmt: skip
        return o, ((final.reshape(B, H, Dk, Dv),) if output_final_state else None)
