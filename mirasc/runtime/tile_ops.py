"""Spec-independent `@triton.jit` operations on a program's fp32 scratch buffers, for kernels
that stage a chunk's intermediates through global memory (L2-resident) instead of holding them
in registers: a tiled tensor-core product with a fused epilogue, and the row-wise and
element-wise steps around it. Every operation starts with a barrier, since it reads what other
threads of the program wrote before it; buffers are row-major, `[rows, cols]`."""

import triton
import triton.language as tl

from .wy_kernels import load_tile, mm, store_tile


@triton.jit
def gemm(a_ptr, sam, sak, b_ptr, sbk, sbn, c_ptr, alpha, rs_ptr, beta, e_ptr, gam,
         M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, RS: tl.constexpr,
         ACC: tl.constexpr, E: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
         BKK: tl.constexpr, DOT: tl.constexpr):  # fmt: skip
    """C = alpha rs (A @ B) [+ beta C] [+ gam E], a [BM, BN] tile of C at a time (A: [M, K]
    with strides sam, sak; B: [K, N] with sbk, sbn, so either may be a transpose; C and E:
    [M, N], contiguous; rs: a factor per row of C, with RS). C may be updated in place: each
    tile is read and written by the same threads."""
    tl.debug_barrier()
    for m0 in range(0, M, BM):
        o_m = m0 + tl.arange(0, BM)
        for n0 in range(0, N, BN):
            o_n = n0 + tl.arange(0, BN)
            acc = tl.zeros([BM, BN], dtype=tl.float32)
            for k0 in range(0, K, BKK):
                o_k = k0 + tl.arange(0, BKK)
                a = tl.load(a_ptr + o_m[:, None] * sam + o_k[None, :] * sak,
                            mask=(o_m[:, None] < M) & (o_k[None, :] < K), other=0.0)  # fmt: skip
                b = tl.load(b_ptr + o_k[:, None] * sbk + o_n[None, :] * sbn,
                            mask=(o_k[:, None] < K) & (o_n[None, :] < N), other=0.0)  # fmt: skip
                acc += mm(a, b, DOT)
            acc *= alpha
            if RS:
                acc *= tl.load(rs_ptr + o_m, mask=o_m < M, other=0.0)[:, None]
            offs = o_m[:, None] * N + o_n[None, :]
            mask = (o_m[:, None] < M) & (o_n[None, :] < N)
            if ACC:
                acc += beta * tl.load(c_ptr + offs, mask=mask, other=0.0)
            if E:
                acc += gam * tl.load(e_ptr + offs, mask=mask, other=0.0)
            tl.store(c_ptr + offs, acc, mask=mask)


@triton.jit
def rows_in(src_ptr, i_b, i_h, t0, T, H, dst_ptr, factor, D: tl.constexpr, BT: tl.constexpr,
            BD: tl.constexpr):  # fmt: skip
    """dst [BT, D] = factor * rows t0..t0+BT of an op input [B, T, H, D] (zero before 0 and
    from T on)."""
    tl.debug_barrier()
    o_t = tl.arange(0, BT)
    base = src_ptr + (i_b * T * H + i_h).to(tl.int64) * D
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        mask = ((t0 + o_t >= 0) & (t0 + o_t < T))[:, None] & (o_d < D)[None, :]
        x = tl.load(base + ((t0 + o_t) * H * D)[:, None] + o_d[None, :], mask=mask, other=0.0)
        tl.store(dst_ptr + o_t[:, None] * D + o_d[None, :], x.to(tl.float32) * factor,
                 mask=(o_d < D)[None, :])  # fmt: skip


@triton.jit
def rowdot(x_ptr, y_ptr, W: tl.constexpr, BT: tl.constexpr, BW: tl.constexpr):
    """Each row's sum of x * y over [BT, W] buffers, [BT]."""
    tl.debug_barrier()
    out = tl.zeros([BT], dtype=tl.float32)
    for w0 in range(0, W, BW):
        x = load_tile(x_ptr, 0, w0, BT, BW, BT, W)
        out += tl.sum(x * load_tile(y_ptr, 0, w0, BT, BW, BT, W), axis=1)
    return out


@triton.jit
def add_row_sums(dst_ptr, src_ptr, factor, WD: tl.constexpr, WS: tl.constexpr,
                 BT: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr):  # fmt: skip
    """dst[t, :] += factor * sum_j src[t, j] over [BT, WD] and [BT, WS] buffers (a product
    with out W - 1 is out times the product with W, less the other operand's row sums)."""
    tl.debug_barrier()
    sums = tl.zeros([BT], dtype=tl.float32)
    for s0 in range(0, WS, BS):
        sums += tl.sum(load_tile(src_ptr, 0, s0, BT, BS, BT, WS), axis=1)
    sums *= factor
    for w0 in range(0, WD, BD):
        store_tile(dst_ptr, load_tile(dst_ptr, 0, w0, BT, BD, BT, WD) + sums[:, None], 0, w0, BT,
                   BD, BT, WD)  # fmt: skip


@triton.jit
def frobenius(x_ptr, y_ptr, R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr,
              BC: tl.constexpr):  # fmt: skip
    """sum(x * y) over [R, C] matrices."""
    tl.debug_barrier()
    out = 0.0
    for r0 in range(0, R, BR):
        for c0 in range(0, C, BC):
            x = load_tile(x_ptr, r0, c0, BR, BC, R, C)
            out += tl.sum(tl.sum(x * load_tile(y_ptr, r0, c0, BR, BC, R, C), axis=1), axis=0)
    return out


@triton.jit
def axpby(dst_ptr, a, x_ptr, b, y_ptr, R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr,
          BC: tl.constexpr, Y: tl.constexpr):  # fmt: skip
    """dst = a x [+ b y] over [R, C] matrices (dst may be x or y)."""
    tl.debug_barrier()
    for r0 in range(0, R, BR):
        for c0 in range(0, C, BC):
            out = a * load_tile(x_ptr, r0, c0, BR, BC, R, C)
            if Y:
                out += b * load_tile(y_ptr, r0, c0, BR, BC, R, C)
            store_tile(dst_ptr, out, r0, c0, BR, BC, R, C)


@triton.jit
def scale_rows(dst_ptr, src_ptr, rs_ptr, factor, W: tl.constexpr, BT: tl.constexpr,
               BW: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """dst (+)= factor * rs[row] * src over [BT, W] buffers (dst may be src)."""
    tl.debug_barrier()
    rs = tl.load(rs_ptr + tl.arange(0, BT))[:, None] * factor
    for w0 in range(0, W, BW):
        out = rs * load_tile(src_ptr, 0, w0, BT, BW, BT, W)
        if ACC:
            out += load_tile(dst_ptr, 0, w0, BT, BW, BT, W)
        store_tile(dst_ptr, out, 0, w0, BT, BW, BT, W)


@triton.jit
def hadamard(dst_ptr, x_ptr, y_ptr, factor, BT: tl.constexpr, ACC: tl.constexpr):
    """dst (+)= factor * x * y over [BT, BT] buffers (the chunk's token-pair matrices)."""
    tl.debug_barrier()
    o_t = tl.arange(0, BT)
    offs = o_t[:, None] * BT + o_t[None, :]
    out = factor * tl.load(x_ptr + offs) * tl.load(y_ptr + offs)
    if ACC:
        out += tl.load(dst_ptr + offs)
    tl.store(dst_ptr + offs, out)


@triton.jit
def copy_flat(dst_ptr, src_ptr, N, BLOCK: tl.constexpr):
    """dst[:N] = src[:N]."""
    tl.debug_barrier()
    for i0 in range(0, N, BLOCK):
        o = i0 + tl.arange(0, BLOCK)
        tl.store(dst_ptr + o, tl.load(src_ptr + o, mask=o < N), mask=o < N)
