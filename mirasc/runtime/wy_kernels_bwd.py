"""Backward Triton kernels of the chunked WY / UT form (the forward pass is wy_kernels.py, whose
notation this follows), recomputing from the states saved at each chunk's start.

_wy_state_bwd_kernel walks chunks in reverse with dS, the adjoint of the state at the chunk's end:
  dV_new = (Gamma * tril(Q K^T))^T dO + (Gamma_last K) dS
  dS    <- G_last dS + (G Q)^T dO - W^T dV_new      (after chunk 0: the initial state's adjoint)
_wy_chunk_bwd_kernel and then _wy_read_bwd_kernel take each chunk on its own (two kernels so
that neither spills): the adjoints through W = Ainv Y and U = Ainv X (Y = beta G K, X = beta V),
Ainv = (I + A)^-1 and the state carry, then through the reads, down to q, k, v, beta and the
cumulative log-decay gc (autograd on the host turns d gc into the gates' adjoints).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .wy_kernels import decay_matrix, load_decay, load_rows, load_tile, mm, store_rows, store_tile


@triton.jit
def _wy_state_bwd_kernel(
    q_ptr, k_ptr, w_ptr, gc_ptr, do_ptr, dfinal_ptr, dh_ptr, dvn_ptr, dh0_ptr, scale,
    T, H, TP, NT, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One (batch, head, value tile), chunks in reverse: saves the adjoint of each chunk's end
    state, writes dV_new, and carries dS back to the initial state's adjoint."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    v0 = i_v * BV
    gc_ptr += i_bh * TP
    o_t = tl.arange(0, BT)
    b_dh = load_tile(dfinal_ptr + i_bh * DK * DV, 0, v0, BKF, BV, DK, DV)
    for r in range(NT):
        i_t = NT - 1 - r
        t0 = i_t * BT
        store_tile(dh_ptr + ((i_bh * NT + i_t) * DK) * DV, b_dh, 0, v0, BKF, BV, DK, DV)
        b_q = load_rows(q_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF).to(tl.float32) * scale
        b_k = load_rows(k_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
        b_do = load_rows(do_ptr, i_b, i_h, t0, v0, T, H, DV, BT, BV)
        b_g = load_decay(gc_ptr, t0, BT, HAS_DECAY)
        b_last = tl.sum(tl.where(o_t == BT - 1, b_g, 0.0))
        b_qk = mm(b_q, tl.trans(b_k), DOT) * decay_matrix(b_g, b_g, o_t, o_t, False)
        b_dvn = mm(tl.trans(b_qk), b_do, DOT)
        b_dvn += mm(b_k * tl.exp(b_last - b_g)[:, None], b_dh, DOT)
        store_tile(dvn_ptr + (i_bh * TP) * DV, b_dvn, t0, v0, BT, BV, TP, DV)
        b_w = load_tile(w_ptr + (i_bh * TP) * DK, t0, 0, BT, BKF, TP, DK)
        b_dh = b_dh * tl.exp(b_last) + mm(tl.trans(b_q * tl.exp(b_g)[:, None]), b_do, DOT)
        b_dh -= mm(tl.trans(b_w), b_dvn, DOT)
    store_tile(dh0_ptr + i_bh * DK * DV, b_dh, 0, v0, BKF, BV, DK, DV)


@triton.jit
def _wy_chunk_bwd_kernel(
    k_ptr, v_ptr, beta_ptr, gc_ptr, ainv_ptr, h_ptr, dh_ptr, vn_ptr, dvn_ptr,
    dk_ptr, dv_ptr, dbeta_ptr, dgc_ptr,
    T, H, TP, NT, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One chunk of one (batch, head), the WY side: through V_new = Ainv (X - Y S) (X = beta V,
    Y = beta G K: dW = -dV_new S^T, dY = -(Ainv^T dV_new) S^T), Ainv = (I + A)^-1
    (dA = -Ainv^T dAinv Ainv^T) and the state carry. Writes dv and beta's adjoint, and the parts
    of dk and d gc that _wy_read_bwd_kernel completes."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_t * BT
    o_t = tl.arange(0, BT)
    h_ptr += ((i_bh * NT + i_t) * DK) * DV
    dh_ptr += ((i_bh * NT + i_t) * DK) * DV
    b_beta = tl.load(beta_ptr + i_bh * TP + t0 + o_t)
    b_g = load_decay(gc_ptr + i_bh * TP, t0, BT, HAS_DECAY)
    b_last = tl.sum(tl.where(o_t == BT - 1, b_g, 0.0))
    b_inv = load_tile(ainv_ptr + (i_bh * TP + t0) * BT, 0, 0, BT, BT, BT, BT)
    b_inv = tl.where(o_t[:, None] >= o_t[None, :], b_inv, 0.0)
    b_k = load_rows(k_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
    b_G = tl.exp(b_g)
    b_carry = tl.exp(b_last - b_g)  # Gamma_last: the carry's weight of each token
    b_bg = b_beta * b_G
    b_dk = tl.zeros([BT, BKF], dtype=tl.float32)
    b_dinv = tl.zeros([BT, BT], dtype=tl.float32)  # the adjoint of Ainv
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    b_dgc = tl.zeros([BT], dtype=tl.float32)
    b_dlast = tl.sum(tl.zeros([BT], dtype=tl.float32))  # d gc_last through G_last S
    for i_v in range(tl.cdiv(DV, BV)):
        v0 = i_v * BV
        b_h = load_tile(h_ptr, 0, v0, BKF, BV, DK, DV)
        b_dh = load_tile(dh_ptr, 0, v0, BKF, BV, DK, DV)
        b_vn = load_tile(vn_ptr + (i_bh * TP) * DV, t0, v0, BT, BV, TP, DV)
        b_dvn = load_tile(dvn_ptr + (i_bh * TP) * DV, t0, v0, BT, BV, TP, DV)
        b_v = load_rows(v_ptr, i_b, i_h, t0, v0, T, H, DV, BT, BV)
        b_dx = mm(tl.trans(b_inv), b_dvn, DOT)
        store_rows(dv_ptr, b_dx * b_beta[:, None], i_b, i_h, t0, v0, T, H, DV, BT, BV)
        b_kh = mm(b_k, b_h, DOT)
        b_ykh = tl.sum(b_dx * b_kh, 1)  # -rowsum(dY * K)
        b_dbeta += tl.sum(b_dx * b_v, 1) - b_ykh * b_G
        b_dcarry = b_carry * tl.sum(b_vn * mm(b_k, b_dh, DOT), 1)
        b_dgc -= b_ykh * b_bg + b_dcarry
        b_dlast += tl.sum(tl.sum(b_dh * b_h, 1), 0) * tl.exp(b_last) + tl.sum(b_dcarry, 0)
        b_dinv += mm(b_dvn, tl.trans(b_v * b_beta[:, None] - b_kh * b_bg[:, None]), DOT)
        b_dk += mm(b_vn, tl.trans(b_dh), DOT) * b_carry[:, None]
        b_dk -= mm(b_dx, tl.trans(b_h), DOT) * b_bg[:, None]
    b_da = -mm(tl.trans(b_inv), mm(b_dinv, tl.trans(b_inv), DOT), DOT)
    b_da = b_da * decay_matrix(b_g, b_g, o_t, o_t, True)
    b_kk = mm(b_k, tl.trans(b_k), DOT)
    b_dbeta += tl.sum(b_da * b_kk, 1)
    b_da = b_da * b_beta[:, None]
    b_dk += mm(b_da, b_k, DOT) + mm(tl.trans(b_da), b_k, DOT)
    b_e = b_da * b_kk
    b_dgc += tl.sum(b_e, 1) - tl.sum(b_e, 0) + tl.where(o_t == BT - 1, b_dlast, 0.0)
    store_rows(dk_ptr, b_dk, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
    tl.store(dbeta_ptr + i_bh * TP + t0 + o_t, b_dbeta)
    tl.store(dgc_ptr + i_bh * TP + t0 + o_t, b_dgc)


@triton.jit
def _wy_read_bwd_kernel(
    q_ptr, k_ptr, gc_ptr, h_ptr, vn_ptr, do_ptr, dq_ptr, dk_ptr, dgc_ptr, scale,
    T, H, TP, NT, DK: tl.constexpr, DV: tl.constexpr,
    BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """One chunk of one (batch, head), the read side: through O = G (Q S) + (Gamma * tril(Q K^T))
    V_new. Writes dq and adds to the dk and d gc of _wy_chunk_bwd_kernel (launched before)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    t0 = i_t * BT
    o_t = tl.arange(0, BT)
    h_ptr += ((i_bh * NT + i_t) * DK) * DV
    b_g = load_decay(gc_ptr + i_bh * TP, t0, BT, HAS_DECAY)
    b_G = tl.exp(b_g)
    b_q = load_rows(q_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF).to(tl.float32) * scale
    b_dq = tl.zeros([BT, BKF], dtype=tl.float32)
    b_dou = tl.zeros([BT, BT], dtype=tl.float32)  # dO V_new^T
    b_dgc = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(DV, BV)):
        v0 = i_v * BV
        b_h = load_tile(h_ptr, 0, v0, BKF, BV, DK, DV)
        b_do = load_rows(do_ptr, i_b, i_h, t0, v0, T, H, DV, BT, BV)
        b_vn = load_tile(vn_ptr + (i_bh * TP) * DV, t0, v0, BT, BV, TP, DV)
        b_dgc += tl.sum(b_do * mm(b_q, b_h, DOT), 1)
        b_dq += mm(b_do, tl.trans(b_h), DOT)
        b_dou += mm(b_do, tl.trans(b_vn), DOT)
    b_dq = b_dq * b_G[:, None]
    b_dgc = b_dgc * b_G
    b_k = load_rows(k_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
    b_m = b_dou * decay_matrix(b_g, b_g, o_t, o_t, False)
    b_dq += mm(b_m, b_k, DOT)
    store_rows(dq_ptr, b_dq * scale, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
    b_e = b_m * mm(b_q, tl.trans(b_k), DOT)
    b_dgc += tl.sum(b_e, 1) - tl.sum(b_e, 0)
    p_dgc = dgc_ptr + i_bh * TP + t0 + o_t
    tl.store(p_dgc, tl.load(p_dgc) + b_dgc)
    b_dk = mm(tl.trans(b_m), b_q, DOT) + load_rows(dk_ptr, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
    store_rows(dk_ptr, b_dk, i_b, i_h, t0, 0, T, H, DK, BT, BKF)
