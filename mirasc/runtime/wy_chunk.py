"""The host side of the chunked WY / UT kernels (wy_kernels.py, wy_kernels_bwd.py) for the chunk-1
delta rule: S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t),
S [Dk, Dv] per (batch, head), beta = c * lr and a = 1 - rate (or 1 without a decay gate).

The gates' adjoints are left to autograd: the kernels take beta and the chunk-local cumulative
log-decay gc (both computed here with torch ops, padded to whole chunks) and return their
adjoints. Activation memory: the state at each chunk's start (ceil(T / block) * Dk * Dv floats
per (batch, head)) plus O(T * (block + Dk + Dv)) floats of per-token chunk quantities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ..errors import BackendError
from .inputs import initial_weights
from .triton_host import custom_op, triton_interpreted
from .wy_kernels import _wy_output_kernel, _wy_prepare_kernel, _wy_state_kernel
from .wy_kernels_bwd import _wy_chunk_bwd_kernel, _wy_read_bwd_kernel, _wy_state_bwd_kernel

MAX_KEY = 128  # the key dimension is one on-chip tile: at most this many columns (padded)
SUB_BLOCK = 16  # rows of the diagonal blocks inverted by forward substitution
# value columns per tile, per kernel: the widest with no spills on sm_90 at Dk = Dv <= 128
VALUE_TILE = dict(prepare=64, state=64, output=64, state_bwd=32, chunk_bwd=16, read_bwd=64)


def _pow2(n: int) -> int:
    """The tile width for n columns: a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, 1 << max(0, (int(n) - 1).bit_length()))


def unsupported(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why these inputs cannot run on the chunked kernels, or None."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the chunked WY kernels take fp32, bf16 or fp16 inputs, not {q.dtype}"
    if not (q.is_cuda or triton_interpreted()):
        return "the chunked WY kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    if _pow2(q.shape[-1]) > MAX_KEY:
        return f"the chunked WY kernels hold a key row in one tile of at most {MAX_KEY} columns"
    return None


KERNELS = {
    "prepare": _wy_prepare_kernel,
    "state": _wy_state_kernel,
    "output": _wy_output_kernel,
    "state_bwd": _wy_state_bwd_kernel,
    "chunk_bwd": _wy_chunk_bwd_kernel,
    "read_bwd": _wy_read_bwd_kernel,
}


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The dtype of the kernels' matmul operands for inputs of `dtype` (see wy_kernels)."""
    return tl.float32 if dtype == torch.float32 or triton_interpreted() else tl.bfloat16


def meta(name: str, Dk: int, Dv: int, block: int, has_decay: bool, dot: tl.dtype) -> dict:
    """Kernel `name`'s compile-time constants (`dot`: the matmul operands' dtype)."""
    if block < SUB_BLOCK or block % SUB_BLOCK or block & (block - 1):
        raise BackendError(f"the WY chunk must be a power of two >= {SUB_BLOCK}, got {block}")
    every = dict(
        DK=Dk, DV=Dv, BT=block, BC=SUB_BLOCK, BKF=_pow2(Dk), BK=min(64, _pow2(Dk)),
        BV=min(VALUE_TILE[name], _pow2(Dv)), HAS_DECAY=has_decay, DOT=dot,
    )  # fmt: skip
    return {n: every[n] for n in KERNELS[name].arg_names if n in every}


def launch_options(name: str, Dk: int) -> dict:
    """Warps and pipeline stages per kernel: the fewest warps with no spills on sm_90 at
    Dk = Dv = 64 and 128 (benchmarks/gpu_static.py; tests/test_gpu_static.py holds them to it)."""
    wide = _pow2(Dk) > 64
    warps = dict(prepare=4, state=8 if wide else 4, output=4, state_bwd=8, chunk_bwd=8,
                 read_bwd=8 if wide else 4)  # fmt: skip
    return dict(num_warps=warps[name], num_stages=1)


def _tiles(name: str, Dv: int) -> int:
    """Value tiles of kernel `name`: its grid's first axis where it is parallel over them."""
    return triton.cdiv(Dv, min(VALUE_TILE[name], _pow2(Dv)))


def _launch(name: str, grid: tuple, args: tuple, q, v, block: int, has_decay: bool) -> None:
    """Kernel `name` on `grid` with its constants and launch options for these inputs."""
    Dk, Dv = q.shape[-1], v.shape[-1]
    KERNELS[name][grid](
        *args, **meta(name, Dk, Dv, block, has_decay, dot_dtype(q.dtype)),
        **launch_options(name, Dk),
    )  # fmt: skip


def launch_forward(q, k, v, beta, gc, h0, scale: float, block: int, has_decay: bool):
    """o and the final state from q, k, v [B, T, H, D], beta and gc [B*H, NT*BT] (padded) and
    the initial state h0 [B*H, Dk, Dv] fp32, and what the backward pass needs: Ainv, W, the
    chunk-start states and V_new."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    NT, TP, BH = triton.cdiv(T, block), beta.shape[-1], B * H
    f32 = dict(dtype=torch.float32, device=q.device)
    ainv = torch.empty((BH, TP, block), **f32)
    w = torch.empty((BH, TP, Dk), **f32)
    u = torch.empty((BH, TP, Dv), **f32)
    h = torch.empty((BH, NT, Dk, Dv), **f32)
    vn = torch.empty((BH, TP, Dv), **f32)
    final = torch.empty((BH, Dk, Dv), **f32)
    o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    sizes = (T, H, TP)
    run = dict(q=q, v=v, block=block, has_decay=has_decay)
    _launch("prepare", (NT, BH), (k, v, beta, gc, ainv, w, u, *sizes), **run)
    _launch("state", (_tiles("state", Dv), BH), (k, w, u, gc, h0, h, vn, final, *sizes, NT), **run)
    _launch("output", (_tiles("output", Dv), NT, BH),
            (q, k, gc, h, vn, o, scale, *sizes, NT), **run)  # fmt: skip
    return o, final, ainv, w, h, vn


def launch_backward(q, k, v, beta, gc, ainv, w, h, vn, do, dfinal, scale, block, has_decay):
    """The adjoints of q, k, v, beta, gc and h0 given those of o and the final state."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    NT, TP, BH = h.shape[1], beta.shape[-1], B * H
    f32 = dict(dtype=torch.float32, device=q.device)
    dh, dvn = torch.empty_like(h), torch.empty_like(vn)
    dh0 = torch.empty((BH, Dk, Dv), **f32)
    dq, dk, dv = (torch.empty(t.shape, **f32) for t in (q, k, v))
    dbeta, dgc = torch.empty_like(beta), torch.empty_like(gc)
    sizes = (T, H, TP, NT)
    run = dict(q=q, v=v, block=block, has_decay=has_decay)
    _launch("state_bwd", (_tiles("state_bwd", Dv), BH),
            (q, k, w, gc, do, dfinal, dh, dvn, dh0, scale, *sizes), **run)  # fmt: skip
    _launch("chunk_bwd", (NT, BH),
            (k, v, beta, gc, ainv, h, dh, vn, dvn, dk, dv, dbeta, dgc, *sizes), **run)  # fmt: skip
    _launch("read_bwd", (NT, BH), (q, k, gc, h, vn, do, dq, dk, dgc, scale, *sizes), **run)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta, dgc, dh0


def _register():
    """The pair as torch.library custom ops (with fake implementations, so that torch.compile
    traces through them) and a registered autograd formula; spec-independent, so registered
    once per process."""

    @torch.library.custom_op("mirasc_wy::chunk_forward", mutates_args=())
    def chunk_forward(
        q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, h0: Tensor, scale: float,
        block: int, has_decay: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """launch_forward as an op: o, the final state, then what the backward pass keeps."""
        return launch_forward(q, k, v, beta, gc, h0, scale, block, has_decay)

    @chunk_forward.register_fake
    def _(q, k, v, beta, gc, h0, scale, block, has_decay):
        B, T, H, Dk = q.shape
        Dv, (BH, TP) = v.shape[-1], beta.shape
        new = beta.new_empty
        return (q.new_empty((B, T, H, Dv)), h0.new_empty(h0.shape), new((BH, TP, block)),
                new((BH, TP, Dk)), new((BH, TP // block, Dk, Dv)), new((BH, TP, Dv)))  # fmt: skip

    @torch.library.custom_op("mirasc_wy::chunk_backward", mutates_args=())
    def chunk_backward(
        q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gc: Tensor, ainv: Tensor, w: Tensor,
        h: Tensor, vn: Tensor, do: Tensor, dfinal: Tensor, scale: float, block: int,
        has_decay: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """launch_backward as an op."""
        return launch_backward(
            q, k, v, beta, gc, ainv, w, h, vn, do, dfinal, scale, block, has_decay
        )

    @chunk_backward.register_fake
    def _(q, k, v, beta, gc, ainv, w, h, vn, do, dfinal, scale, block, has_decay):
        f32 = dict(dtype=torch.float32)
        return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
                beta.new_empty(beta.shape), gc.new_empty(gc.shape),
                dfinal.new_empty(dfinal.shape, **f32))  # fmt: skip

    def setup_context(ctx, inputs, output):
        """Keep the inputs and the forward pass's chunk quantities (output[2:])."""
        q, k, v, beta, gc, _, scale, block, has_decay = inputs
        ctx.save_for_backward(q, k, v, beta, gc, *output[2:])
        ctx.scale, ctx.block, ctx.has_decay = scale, block, has_decay

    def backward(ctx, do, dfinal, *_saved):
        """The inputs' adjoints; gc gets none without a decay gate (it is a constant then)."""
        q, k, v, beta, gc, ainv, w, h, vn = ctx.saved_tensors
        B, T, H, _ = q.shape
        do = q.new_zeros((B, T, H, v.shape[-1])) if do is None else do.contiguous()
        BH, Dk, Dv = B * H, q.shape[-1], v.shape[-1]
        dfinal = h.new_zeros((BH, Dk, Dv)) if dfinal is None else dfinal.contiguous()
        dq, dk, dv, dbeta, dgc, dh0 = chunk_backward(
            q, k, v, beta, gc, ainv, w, h, vn, do, dfinal, ctx.scale, ctx.block, ctx.has_decay
        )
        return dq, dk, dv, dbeta, dgc if ctx.has_decay else None, dh0, None, None, None

    chunk_forward.register_autograd(backward, setup_context=setup_context)
    return chunk_forward


def _log_keep(rate: Tensor) -> Tensor:
    """log(1 - rate), the per-token log-decay, with a full forget (rate exactly 1) taken as
    e^-80 ~ 1.8e-35 (zero in effect) so that no -inf - -inf reaches the kernels (its gradient is
    then 0). A rate above 1 (a negative keep factor) has no logarithm: NaN, not a wrong value."""
    full = rate == 1.0
    return torch.where(full, -80.0, torch.log1p(-torch.where(full, 0.0, rate)))


def _padded_rows(x: torch.Tensor, TP: int) -> torch.Tensor:
    """[B, H, T] -> [B*H, TP], zero past T."""
    B, H, T = x.shape
    return F.pad(x, (0, TP - T)).reshape(B * H, TP)


def forward(
    q, k, v, lr, rate, *, c: float, scale: float, initial_state, output_final_state: bool,
    ln_weight=None, ln_bias=None, anchor_state=None, chunk_offset: int = 0, block: int = 64,
):  # fmt: skip
    """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked kernels, for
    gates lr and rate [B, H, T] (rate None without a decay gate) and dl/dy = c (y - v).
    The chunk-1 delta rule has no LayerNorm and no partial chunk to continue: `ln_weight` and
    `ln_bias` must be None, `chunk_offset` 0 (then `anchor_state` plays no part)."""
    reason = unsupported(q, v)
    if reason is not None:
        raise BackendError(reason)
    if ln_weight is not None or ln_bias is not None:
        raise BackendError("the chunked WY kernels have no memory LayerNorm")
    if chunk_offset != 0:
        raise BackendError(f"chunk_offset must be an int in [0, 1), got {chunk_offset!r}")
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    (state,) = initial_weights(initial_state, [(Dk, Dv)], 1, q, "")
    if T == 0:
        return q.new_zeros(B, 0, H, Dv), ((state,) if output_final_state else None)
    TP = triton.cdiv(T, block) * block
    beta = _padded_rows(c * lr.float(), TP)
    if rate is None:
        gc = beta.new_zeros(B * H, TP)
    else:  # the in-chunk cumulative log-decay (zero-padded log a keeps gc_last past T)
        log_a = _padded_rows(_log_keep(rate.float()), TP)
        gc = log_a.reshape(B * H, TP // block, block).cumsum(-1).reshape(B * H, TP)
    h0 = state.reshape(B * H, Dk, Dv).contiguous()
    o, final, *_ = custom_op("mirasc_wy", _register)(
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(), gc.contiguous(), h0,
        float(scale), int(block), rate is not None,
    )  # fmt: skip
    return o, ((final.reshape(B, H, Dk, Dv),) if output_final_state else None)
