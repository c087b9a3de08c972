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

from ..errors import BackendError
from .inputs import initial_weights
from .triton_host import triton_interpreted
from .wy_kernels import _wy_output_kernel, _wy_prepare_kernel, _wy_state_kernel
from .wy_kernels_bwd import _wy_chunk_bwd_kernel, _wy_state_bwd_kernel

MAX_KEY = 128  # the key dimension is one on-chip tile: at most this many columns (padded)
SUB_BLOCK = 16  # rows of the diagonal blocks inverted by forward substitution


def _pow2(n: int) -> int:
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


def meta(q: torch.Tensor, v: torch.Tensor, block: int, has_decay: bool) -> dict:
    """The kernels' compile-time constants for these inputs and chunk size."""
    if block < SUB_BLOCK or block % SUB_BLOCK or block & (block - 1):
        raise BackendError(f"the WY chunk must be a power of two >= {SUB_BLOCK}, got {block}")
    Dk, Dv = q.shape[-1], v.shape[-1]
    return dict(
        BT=block, BKF=_pow2(Dk), BK=min(64, _pow2(Dk)), BV=min(64, _pow2(Dv)),
        HAS_DECAY=has_decay, IEEE=q.dtype == torch.float32,
    )  # fmt: skip


def launch_options(kernel: str, Dk: int) -> dict:
    """Warps and pipeline stages per kernel (tuned on sm_90 for no spills at Dk up to 128)."""
    wide = _pow2(Dk) > 64
    warps = {"prepare": 4, "state": 8 if wide else 4, "output": 4, "state_bwd": 8 if wide else 4,
             "chunk_bwd": 8 if wide else 4}[kernel]  # fmt: skip
    return dict(num_warps=warps, num_stages=1)


def _only(m: dict, *names: str) -> dict:
    return {n: m[n] for n in names}


class _WYChunk(torch.autograd.Function):
    """o and the final state from q, k, v [B, T, H, D], beta and gc [B*H, NT*BT] (padded) and
    the initial state h0 [B*H, Dk, Dv] fp32; backward returns the adjoints of all six."""

    @staticmethod
    def forward(ctx, q, k, v, beta, gc, h0, scale, block, has_decay):
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        m = meta(q, v, block, has_decay)
        NT, TP, BH = triton.cdiv(T, block), beta.shape[-1], B * H
        f32 = dict(dtype=torch.float32, device=q.device)
        ainv = torch.empty((BH, TP, block), **f32)
        w = torch.empty((BH, TP, Dk), **f32)
        u = torch.empty((BH, TP, Dv), **f32)
        sizes = (T, H, Dk, Dv, TP)
        common = _only(m, "BT", "HAS_DECAY", "IEEE")
        _wy_prepare_kernel[(NT, BH)](
            k, v, beta, gc, ainv, w, u, *sizes, BC=SUB_BLOCK,
            **_only(m, "BKF", "BK", "BV"), **common, **launch_options("prepare", Dk),
        )  # fmt: skip
        h = torch.empty((BH, NT, Dk, Dv), **f32)
        vn = torch.empty((BH, TP, Dv), **f32)
        final = torch.empty((BH, Dk, Dv), **f32)
        _wy_state_kernel[(triton.cdiv(Dv, m["BV"]), BH)](
            k, w, u, gc, h0, h, vn, final, *sizes, NT,
            **_only(m, "BKF", "BV"), **common, **launch_options("state", Dk),
        )  # fmt: skip
        o = torch.empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
        _wy_output_kernel[(triton.cdiv(Dv, m["BV"]), NT, BH)](
            q, k, gc, h, vn, o, scale, *sizes, NT,
            **_only(m, "BK", "BV"), **common, **launch_options("output", Dk),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, beta, gc, ainv, w, h, vn)
        ctx.scale, ctx.block, ctx.has_decay = scale, block, has_decay
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, beta, gc, ainv, w, h, vn = ctx.saved_tensors
        B, T, H, Dk = q.shape
        Dv = v.shape[-1]
        m = meta(q, v, ctx.block, ctx.has_decay)
        NT, TP, BH = h.shape[1], beta.shape[-1], B * H
        f32 = dict(dtype=torch.float32, device=q.device)
        do = q.new_zeros((B, T, H, Dv)) if do is None else do.contiguous()
        dfinal = torch.zeros((BH, Dk, Dv), **f32) if dfinal is None else dfinal.contiguous()
        sizes = (T, H, Dk, Dv, TP, NT)
        common = _only(m, "BT", "BKF", "BV", "HAS_DECAY", "IEEE")
        dh = torch.empty_like(h)
        dvn = torch.empty_like(vn)
        dh0 = torch.empty((BH, Dk, Dv), **f32)
        _wy_state_bwd_kernel[(triton.cdiv(Dv, m["BV"]), BH)](
            q, k, w, gc, do, dfinal, dh, dvn, dh0, ctx.scale, *sizes,
            **common, **launch_options("state_bwd", Dk),
        )  # fmt: skip
        dq = torch.empty(q.shape, **f32)
        dk = torch.empty(k.shape, **f32)
        dv = torch.empty(v.shape, **f32)
        dbeta = torch.empty_like(beta)
        dgc = torch.empty_like(gc)
        _wy_chunk_bwd_kernel[(NT, BH)](
            q, k, v, beta, gc, ainv, h, dh, vn, dvn, do, dq, dk, dv, dbeta, dgc, ctx.scale,
            *sizes, **common, **launch_options("chunk_bwd", Dk),
        )  # fmt: skip
        dgc = dgc if ctx.has_decay else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta, dgc, dh0, None, None, None


def _padded_rows(x: torch.Tensor, TP: int) -> torch.Tensor:
    """[B, H, T] -> [B*H, TP], zero past T."""
    B, H, T = x.shape
    return F.pad(x, (0, TP - T)).reshape(B * H, TP)


def forward(
    q, k, v, lr, rate, *, c: float, scale: float, initial_state, output_final_state: bool,
    block: int = 64, **unused,
):  # fmt: skip
    """The op contract (o [B, T, H, Dv], final state tuple or None) on the chunked kernels, for
    gates lr and rate [B, H, T] (rate None without a decay gate) and dl/dy = c (y - v).
    `unused` are the contract's options that the chunk-1 delta rule has no use for
    (ln_weight, ln_bias: no LayerNorm; anchor_state, chunk_offset: chunk 1 is never continued)."""
    reason = unsupported(q, v)
    if reason is not None:
        raise BackendError(reason)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    (state,) = initial_weights(initial_state, [(Dk, Dv)], 1, q, "")
    if T == 0:
        return q.new_zeros(B, 0, H, Dv), ((state,) if output_final_state else None)
    TP = triton.cdiv(T, block) * block
    beta = _padded_rows(c * lr.float(), TP)
    if rate is None:
        gc = beta.new_zeros(B * H, TP)
    else:
        log_a = _padded_rows(torch.log1p(-rate.float()), TP)
        gc = log_a.reshape(B * H, TP // block, block).cumsum(-1).reshape(B * H, TP)
    h0 = state.reshape(B * H, Dk, Dv).contiguous()
    o, final = _WYChunk.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(), gc.contiguous(), h0,
        float(scale), int(block), rate is not None,
    )  # fmt: skip
    return o, ((final.reshape(B, H, Dk, Dv),) if output_final_state else None)
