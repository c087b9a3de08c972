"""Forward Triton kernels of the chunked WY / UT form of the chunk-1 delta rule (any spec whose
plan has the "wy" strategy; what differs between specs arrives as arguments and constexprs).

Per chunk of BT tokens, with in-chunk cumulative log-decay gc (host-computed), G = exp(gc) and
Gamma[t, j] = exp(gc_t - gc_j):
  A = tril(beta * Gamma * K K^T, -1),  Ainv = (I + A)^-1            (_wy_prepare_kernel)
  W = Ainv (beta G K),  U = Ainv (beta V)
  V_new = U - W S,  S <- G_last S + (Gamma_last K)^T V_new           (_wy_state_kernel)
  O = G (Q S) + (Gamma * tril(Q K^T)) V_new                          (_wy_output_kernel)
Every in-chunk product is a `tl.dot`; accumulation is fp32. With fp32 inputs (DOT) the dots
are exact fp32; with bf16/fp16 inputs their operands are cast to that dtype (tensor cores).
Buffers the host allocates are padded to NT * BT tokens per (batch, head) so that chunk-local
loads of them need no masks beyond the head sizes.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mm(a, b, DOT: tl.constexpr):
    """a @ b accumulated in fp32, its operands in DOT: fp32 (exact, no tf32) or bf16 (tensor
    cores)."""
    if DOT == tl.float32:  # noqa: SIM300 (a constexpr compared in Triton, not a Yoda condition)
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DOT), b.to(DOT))
    return out


@triton.jit
def rows_ptrs(ptr, i_b, i_h, t0, d0, T, H, D, BT: tl.constexpr, BD: tl.constexpr,
              FRONT: tl.constexpr = False):  # fmt: skip
    """Pointers and mask of rows t0..t0+BT, columns d0..d0+BD of an op input [B, T, H, D] for
    head (i_b, i_h): a 64-bit base, 32-bit offsets within the head. Rows from T on are masked,
    and with FRONT those before 0 (padding in front of a continued chunk)."""
    o_t = t0 + tl.arange(0, BT)
    o_d = d0 + tl.arange(0, BD)
    base = ptr + (i_b * T * H + i_h) * D
    mask = (o_t[:, None] < T) & (o_d[None, :] < D)
    if FRONT:
        mask &= o_t[:, None] >= 0
    return base + (o_t[:, None] * (H * D) + o_d[None, :]), mask


@triton.jit
def load_rows(ptr, i_b, i_h, t0, d0, T, H, D, BT: tl.constexpr, BD: tl.constexpr,
              FRONT: tl.constexpr = False):  # fmt: skip
    """Rows t0..t0+BT, columns d0..d0+BD of an op input [B, T, H, D] for head (i_b, i_h), in
    its dtype (half tiles hold half the registers; arithmetic with fp32 promotes), zero outside
    the tensor (FRONT: see rows_ptrs)."""
    p, mask = rows_ptrs(ptr, i_b, i_h, t0, d0, T, H, D, BT, BD, FRONT)
    return tl.load(p, mask=mask, other=0.0)


@triton.jit
def store_rows(ptr, x, i_b, i_h, t0, d0, T, H, D, BT: tl.constexpr, BD: tl.constexpr,
               FRONT: tl.constexpr = False):  # fmt: skip
    """The inverse of load_rows: store x [BT, BD] into [B, T, H, D] in the buffer's dtype."""
    p, mask = rows_ptrs(ptr, i_b, i_h, t0, d0, T, H, D, BT, BD, FRONT)
    tl.store(p, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def chunk_inputs(q_ptr, k_ptr, v_ptr, i_b, i_h, t0, OFFSET, scale, T, H, DK: tl.constexpr,
                 DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 CONT: tl.constexpr):  # fmt: skip
    """The chunked kernels' rows of a chunk starting at row t0: the call's token of its first
    row (with CONT, a call continuing a chunk, OFFSET padding rows come first), the mask of its
    real tokens over [BT, BV], and scale * q, k, v in fp32 (zero outside the call)."""
    tk0 = t0 - OFFSET if CONT else t0
    tok = tk0 + tl.arange(0, BT)
    mask = ((tok >= 0) & (tok < T))[:, None] & (tl.arange(0, BV) < DV)[None, :]
    b_x = load_rows(q_ptr, i_b, i_h, tk0, 0, T, H, DK, BT, BK, CONT).to(tl.float32) * scale
    b_k = load_rows(k_ptr, i_b, i_h, tk0, 0, T, H, DK, BT, BK, CONT).to(tl.float32)
    b_v = load_rows(v_ptr, i_b, i_h, tk0, 0, T, H, DV, BT, BV, CONT).to(tl.float32)
    return tk0, mask, b_x, b_k, b_v


@triton.jit
def surprise_weights(w_ptr, anc_ptr, n, CONT: tl.constexpr):
    """Where chunk n's surprise reads its weights: the state, or with CONT the first chunk's
    anchor (a call continuing a chunk)."""
    out = w_ptr
    if CONT:  # noqa: SIM102 (a constexpr test, resolved at compile time, around a runtime one)
        if n == 0:
            out = anc_ptr
    return out


@triton.jit
def tile_ptrs(ptr, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr, nrows, ncols):
    """Pointers and mask of a [ROWS, COLS] tile of a row-major fp32 [nrows, ncols] buffer."""
    o_r = row0 + tl.arange(0, ROWS)
    o_c = col0 + tl.arange(0, COLS)
    mask = (o_r[:, None] < nrows) & (o_c[None, :] < ncols)
    return ptr + (o_r[:, None] * ncols + o_c[None, :]), mask


@triton.jit
def load_tile(ptr, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr, nrows, ncols):
    """A [ROWS, COLS] tile of a row-major fp32 [nrows, ncols] buffer, zero outside it."""
    p, mask = tile_ptrs(ptr, row0, col0, ROWS, COLS, nrows, ncols)
    return tl.load(p, mask=mask, other=0.0)


@triton.jit
def store_tile(ptr, x, row0, col0, ROWS: tl.constexpr, COLS: tl.constexpr, nrows, ncols):
    """Store x into a [ROWS, COLS] tile of a row-major fp32 [nrows, ncols] buffer."""
    p, mask = tile_ptrs(ptr, row0, col0, ROWS, COLS, nrows, ncols)
    tl.store(p, x, mask=mask)


@triton.jit
def load_decay(gc_ptr, t0, BT: tl.constexpr, HAS_DECAY: tl.constexpr):
    """The chunk-local cumulative log-decay of rows t0..t0+BT (zeros without a decay gate)."""
    if HAS_DECAY:  # noqa: SIM108 (a block: Triton resolves it at compile time)
        b_g = tl.load(gc_ptr + t0 + tl.arange(0, BT))
    else:
        b_g = tl.zeros([BT], dtype=tl.float32)
    return b_g


@triton.jit
def decay_matrix(b_gr, b_gc, o_r, o_c, STRICT: tl.constexpr):
    """Gamma[r, c] = exp(gc_r - gc_c) on the lower triangle (strict or not), 0 above: the
    exponent is only taken where it is <= 0."""
    keep = (o_r[:, None] > o_c[None, :]) if STRICT else (o_r[:, None] >= o_c[None, :])
    return tl.where(keep, tl.exp(tl.where(keep, b_gr[:, None] - b_gc[None, :], 0.0)), 0.0)


@triton.jit
def unit_lower_inverse(b_a, BC: tl.constexpr):
    """(I + A)^-1 for a strictly lower-triangular A [BC, BC], by forward substitution: row i of
    N = (I + A)^-1 - I is -a_i - sum_{j<i} A[i, j] n_j, and rows j < i are already final."""
    o = tl.arange(0, BC)
    b_n = -b_a
    for i in range(1, BC):
        row = tl.sum(tl.where(o[:, None] == i, b_n, 0.0), 0)
        row = row + tl.sum(row[:, None] * b_n, 0)
        b_n = tl.where(o[:, None] == i, row[None, :], b_n)
    return b_n + tl.where(o[:, None] == o[None, :], 1.0, 0.0)


@triton.jit
def system_block(k_ptr, beta_ptr, gc_ptr, i_b, i_h, t0, r0, c0, T, H, DK,
                 BC: tl.constexpr, BKF: tl.constexpr, HAS_DECAY: tl.constexpr,
                 DOT: tl.constexpr):  # fmt: skip
    """Block (rows r0.., columns c0..) of A = tril(beta * Gamma * K K^T, -1) in the chunk at t0."""
    b_kr = load_rows(k_ptr, i_b, i_h, t0 + r0, 0, T, H, DK, BC, BKF)
    b_kc = load_rows(k_ptr, i_b, i_h, t0 + c0, 0, T, H, DK, BC, BKF)
    b_beta = tl.load(beta_ptr + t0 + r0 + tl.arange(0, BC))
    o_r = r0 + tl.arange(0, BC)
    o_c = c0 + tl.arange(0, BC)
    b_gam = decay_matrix(
        load_decay(gc_ptr, t0 + r0, BC, HAS_DECAY),
        load_decay(gc_ptr, t0 + c0, BC, HAS_DECAY),
        o_r, o_c, True,
    )  # fmt: skip
    return mm(b_kr, tl.trans(b_kc), DOT) * b_gam * b_beta[:, None]


@triton.jit
def _wy_prepare_kernel(
    k_ptr, v_ptr, beta_ptr, gc_ptr, ainv_ptr, w_ptr, u_ptr,
    T, H, TP, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BKF: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One chunk of one (batch, head): Ainv = (I + A)^-1 by BC x BC diagonal blocks (forward
    substitution) merged block row by block row, Ainv[i, j] = -Ainv[i, i] sum_m A[i, m] Ainv[m, j];
    then W and U. Ainv is written to and re-read from its buffer between block rows."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_t * BT
    beta_ptr += i_bh * TP
    gc_ptr += i_bh * TP
    ainv_ptr += (i_bh * TP + t0) * BT
    NB: tl.constexpr = BT // BC
    for i in tl.static_range(NB):
        b_a = system_block(k_ptr, beta_ptr, gc_ptr, i_b, i_h, t0, i * BC, i * BC, T, H, DK,
                           BC, BKF, HAS_DECAY, DOT)  # fmt: skip
        store_tile(ainv_ptr, unit_lower_inverse(b_a, BC), i * BC, i * BC, BC, BC, BT, BT)
    tl.debug_barrier()
    for i in tl.static_range(1, NB):
        b_inv_ii = load_tile(ainv_ptr, i * BC, i * BC, BC, BC, BT, BT)
        for j in tl.static_range(0, i):
            b_acc = tl.zeros([BC, BC], dtype=tl.float32)
            for m in tl.static_range(j, i):
                b_a = system_block(k_ptr, beta_ptr, gc_ptr, i_b, i_h, t0, i * BC, m * BC, T, H,
                                   DK, BC, BKF, HAS_DECAY, DOT)  # fmt: skip
                b_acc += mm(b_a, load_tile(ainv_ptr, m * BC, j * BC, BC, BC, BT, BT), DOT)
            store_tile(ainv_ptr, -mm(b_inv_ii, b_acc, DOT), i * BC, j * BC, BC, BC, BT, BT)
        tl.debug_barrier()
    o_t = tl.arange(0, BT)
    b_inv = tl.where(o_t[:, None] >= o_t[None, :], load_tile(ainv_ptr, 0, 0, BT, BT, BT, BT), 0.0)
    b_beta = tl.load(beta_ptr + t0 + o_t)
    b_bg = b_beta * tl.exp(load_decay(gc_ptr, t0, BT, HAS_DECAY))
    for i_k in range(tl.cdiv(DK, BK)):
        b_k = load_rows(k_ptr, i_b, i_h, t0, i_k * BK, T, H, DK, BT, BK)
        b_w = mm(b_inv, b_k * b_bg[:, None], DOT)
        store_tile(w_ptr + (i_bh * TP) * DK, b_w, t0, i_k * BK, BT, BK, TP, DK)
    for i_v in range(tl.cdiv(DV, BV)):
        b_v = load_rows(v_ptr, i_b, i_h, t0, i_v * BV, T, H, DV, BT, BV)
        b_u = mm(b_inv, b_v * b_beta[:, None], DOT)
        store_tile(u_ptr + (i_bh * TP) * DV, b_u, t0, i_v * BV, BT, BV, TP, DV)


@triton.jit
def _wy_state_kernel(
    k_ptr, w_ptr, u_ptr, gc_ptr, h0_ptr, h_ptr, vn_ptr, final_ptr,
    T, H, TP, NT, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One (batch, head, value tile), chunks in order: saves the state at each chunk's start,
    writes V_new = U - W S, and carries S <- G_last S + (Gamma_last K)^T V_new."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    v0 = i_v * BV
    gc_ptr += i_bh * TP
    b_h = load_tile(h0_ptr + i_bh * DK * DV, 0, v0, BKF, BV, DK, DV)
    for i_t in range(NT):
        t0 = i_t * BT
        store_tile(h_ptr + ((i_bh * NT + i_t) * DK) * DV, b_h, 0, v0, BKF, BV, DK, DV)
        b_w = load_tile(w_ptr + (i_bh * TP) * DK, t0, 0, BT, BKF, TP, DK)
        b_vn = load_tile(u_ptr + (i_bh * TP) * DV, t0, v0, BT, BV, TP, DV) - mm(b_w, b_h, DOT)
        store_tile(vn_ptr + (i_bh * TP) * DV, b_vn, t0, v0, BT, BV, TP, DV)
        b_g = load_decay(gc_ptr, t0, BT, HAS_DECAY)
        b_last = tl.sum(tl.where(tl.arange(0, BT) == BT - 1, b_g, 0.0))
        b_k = load_rows(k_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
        b_k = b_k * tl.exp(b_last - b_g)[:, None]
        b_h = b_h * tl.exp(b_last) + mm(tl.trans(b_k), b_vn, DOT)
    store_tile(final_ptr + i_bh * DK * DV, b_h, 0, v0, BKF, BV, DK, DV)


@triton.jit
def _wy_output_kernel(
    q_ptr, k_ptr, gc_ptr, h_ptr, vn_ptr, o_ptr, scale,
    T, H, TP, NT, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One (value tile, chunk, batch-head): O = G (Q S) + (Gamma * tril(Q K^T)) V_new, in parallel
    over chunks from the states saved at their starts."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    t0, v0 = i_t * BT, i_v * BV
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(DK, BK)):
        b_q = load_rows(q_ptr, i_b, i_h, t0, i_k * BK, T, H, DK, BT, BK).to(tl.float32) * scale
        b_k = load_rows(k_ptr, i_b, i_h, t0, i_k * BK, T, H, DK, BT, BK)
        b_h = load_tile(h_ptr + ((i_bh * NT + i_t) * DK) * DV, i_k * BK, v0, BK, BV, DK, DV)
        b_o += mm(b_q, b_h, DOT)
        b_qk += mm(b_q, tl.trans(b_k), DOT)
    o_t = tl.arange(0, BT)
    b_g = load_decay(gc_ptr + i_bh * TP, t0, BT, HAS_DECAY)
    b_qk = b_qk * decay_matrix(b_g, b_g, o_t, o_t, False)
    b_vn = load_tile(vn_ptr + (i_bh * TP) * DV, t0, v0, BT, BV, TP, DV)
    b_o = b_o * tl.exp(b_g)[:, None] + mm(b_qk, b_vn, DOT)
    store_rows(o_ptr, b_o, i_b, i_h, t0, v0, T, H, DV, BT, BV)
