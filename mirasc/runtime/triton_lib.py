"""The spec-independent `@triton.jit` helpers every generated Triton backend calls: products of
small on-chip tiles, LayerNorm's forward and backward pieces, a masked row softmax and integer
powers. Generated kernels import them from here; only what the spec decides is generated."""

import triton
import triton.language as tl


@triton.jit
def ipow(x, n: tl.constexpr):
    """x ** n for a compile-time integer n >= 0, as n multiplications (exact, any sign of x)."""
    r = x * 0.0 + 1.0
    for _ in tl.static_range(n):
        r = r * x
    return r


@triton.jit
def stable_tanh(x):
    """tanh(x) to a few fp32 ulps at every size of x: its odd Taylor series below |x| = 1/8,
    where 2 sigmoid(2x) - 1 would lose the leading digits (1e-4 relative error at x = 1e-3),
    and sign(x) (1 - e) / (1 + e), e = exp(-2|x|), above."""
    a = tl.abs(x)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    e = tl.exp(-2.0 * a)
    ratio = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0.125, series, tl.where(x < 0, -ratio, ratio))


@triton.jit
def stable_sinh(x):
    """sinh(x) to a few fp32 ulps at every size of x: its odd Taylor series below |x| = 1/2,
    where (exp(x) - exp(-x)) / 2 would lose the leading digits, that difference above."""
    x2 = x * x
    series = x * (1.0 + x2 * (1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (1.0 / 5040.0))))
    return tl.where(tl.abs(x) < 0.5, series, 0.5 * (tl.exp(x) - tl.exp(-x)))


@triton.jit
def vecmat(x, w):
    """x [I] times w [I, O] -> [O]."""
    return tl.sum(x[:, None] * w, axis=0)


@triton.jit
def matvec(w, d):
    """w [I, O] times d [O] -> [I]."""
    return tl.sum(w * d[None, :], axis=1)


@triton.jit
def outer(a, d):
    return a[:, None] * d[None, :]


@triton.jit
def ln_fwd(m, mask, N: tl.constexpr):
    """(x_hat, rstd) of LayerNorm over the first N entries (eps 1e-5)."""
    mu = tl.sum(m, axis=0) / N
    c = tl.where(mask, m - mu, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, axis=0) / N + 1e-5)
    return c * rstd, rstd


@triton.jit
def ln_bwd(xb, xh, rstd, mask, N: tl.constexpr):
    """Adjoint of LayerNorm's input from the adjoint `xb` of x_hat."""
    out = rstd * (xb - tl.sum(xb, axis=0) / N - xh * (tl.sum(xb * xh, axis=0) / N))
    return tl.where(mask, out, 0.0)


@triton.jit
def ln_bwd_bwd(ob, xb, xh, rstd, mask, N: tl.constexpr):
    """Adjoints of (xb, xh, rstd) through out = ln_bwd(xb, xh, rstd) given out's adjoint ob."""
    a = tl.sum(xb * xh, axis=0) / N
    w = tl.where(mask, xb - tl.sum(xb, axis=0) / N - xh * a, 0.0)
    rstd_b = tl.sum(ob * w, axis=0)
    u = rstd * ob
    uxh = tl.sum(u * xh, axis=0) / N
    xb_b = tl.where(mask, u - tl.sum(u, axis=0) / N - xh * uxh, 0.0)
    xh_b = tl.where(mask, -u * a - uxh * xb, 0.0)
    return xb_b, xh_b, rstd_b


@triton.jit
def ln_fwd_bwd(xh_b, rstd_b, xh, rstd, mask, N: tl.constexpr):
    """Adjoint of LayerNorm's input from the adjoints of x_hat and of rstd."""
    c = xh / rstd
    total = rstd_b + tl.sum(xh_b * c, axis=0)
    cb = xh_b * rstd - total * rstd * rstd * rstd * c / N
    return tl.where(mask, cb - tl.sum(cb, axis=0) / N, 0.0)


@triton.jit
def softmax_rows(z, m, mi):
    """Softmax over each row's valid entries; zero elsewhere."""
    z = tl.where(m, z, float("-inf"))
    zmax = tl.where(mi, tl.max(z, axis=1), 0.0)
    ex = tl.where(m, tl.exp(z - zmax[:, None]), 0.0)
    den = tl.where(mi, tl.sum(ex, axis=1), 1.0)
    return ex / den[:, None]


@triton.jit
def ln_params(ln_ptr, i_h, H, o_v, DV: tl.constexpr):
    """LayerNorm's gain and bias of head i_h (ln_ptr [2, H, DV]) at columns o_v as rows, zero
    past DV."""
    gamma = tl.load(ln_ptr + i_h * DV + o_v, mask=o_v < DV, other=0.0)[None, :]
    beta = tl.load(ln_ptr + (H + i_h) * DV + o_v, mask=o_v < DV, other=0.0)[None, :]
    return gamma, beta


@triton.jit
def add_ln_adjoints(dln_ptr, dgamma, dbeta, i_bh, BH, DV: tl.constexpr, BV: tl.constexpr):
    """Adds a program's sums of LayerNorm's gain and bias adjoints ([BV] each) into its rows of
    dln_ptr [2, BH, DV]: a kernel that adds them per chunk holds none across its chunks."""
    o_v = tl.arange(0, BV)
    p = dln_ptr + i_bh * DV + o_v
    tl.store(p, tl.load(p, mask=o_v < DV) + dgamma, mask=o_v < DV)
    tl.store(p + BH * DV, tl.load(p + BH * DV, mask=o_v < DV) + dbeta, mask=o_v < DV)


@triton.jit
def ln_rows(m, mask, N: tl.constexpr):
    """(x_hat, rstd) of LayerNorm over the first N columns of each row of m [R, C] (eps 1e-5);
    x_hat is zero outside `mask`, rstd a column [R, 1]."""
    mu = tl.sum(m, axis=1, keep_dims=True) / N
    c = tl.where(mask, m - mu, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, axis=1, keep_dims=True) / N + 1e-5)
    return c * rstd, rstd


@triton.jit
def ln_back_rows(xb, xh, rstd, mask, N: tl.constexpr):
    """ln_bwd for each row: the adjoint of LayerNorm's input from the adjoint `xb` of x_hat.
    Its row mean, zero in exact arithmetic, is taken out last: rstd (large when LayerNorm's
    input is near constant) times the rounding of sum(x_hat) would otherwise stay in it, and
    a kl memory's near-uniform rows pass a constant straight on to its read's input (a
    drawn deep kl case: q's gradient 9e-3 off, 1e-4 with the mean taken out last)."""
    mean_bx = tl.sum(xb * xh, axis=1, keep_dims=True) / N
    out = tl.where(mask, rstd * (xb - xh * mean_bx), 0.0)
    return tl.where(mask, out - tl.sum(out, axis=1, keep_dims=True) / N, 0.0)


@triton.jit
def ln_back_rows_vjp(w, u, xh, rstd, mask, N: tl.constexpr):
    """Reverse of out = ln_back_rows(u, xh, rstd) for each row given out's adjoint w: the
    adjoints of u, of x_hat and of rstd ([R, 1])."""
    mean_ux = tl.sum(u * xh, axis=1, keep_dims=True) / N
    inner = tl.where(mask, u - tl.sum(u, axis=1, keep_dims=True) / N - xh * mean_ux, 0.0)
    rstd_b = tl.sum(w * inner, axis=1, keep_dims=True)
    s = rstd * w
    mean_sx = tl.sum(s * xh, axis=1, keep_dims=True) / N
    u_b = tl.where(mask, s - tl.sum(s, axis=1, keep_dims=True) / N - xh * mean_sx, 0.0)
    xh_b = tl.where(mask, -s * mean_ux - mean_sx * u, 0.0)
    return u_b, xh_b, rstd_b


@triton.jit
def ln_fwd_back_rows(xh_b, rstd_b, xh, rstd, mask, N: tl.constexpr):
    """For each row, the adjoint of LayerNorm's input from the adjoints of x_hat and of rstd."""
    c = xh / rstd
    total = rstd_b + tl.sum(xh_b * c, axis=1, keep_dims=True)
    cb = tl.where(mask, xh_b * rstd - total * rstd * rstd * rstd * c / N, 0.0)
    return tl.where(mask, cb - tl.sum(cb, axis=1, keep_dims=True) / N, 0.0)
