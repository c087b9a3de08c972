"""One chunk of the dual form, forward and reverse, for `mirasc.runtime.chunked`: the surprise
of each token at the chunk's anchor state, the reads of the chunk's tokens, the state update,
and the vector-Jacobian product of each. Tensors are one chunk, [B, H, C, ..]; weights
[B, H, in, out]. The reverse of the surprise is the backward pass through the inner gradient
step: the loss's vector-Jacobian product (`bias_vjp`), sigma'' (`act_grad2`), LayerNorm's
backward-of-backward, and the derivatives of the soft clip and of MONETA's normaliser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LN_EPS = 1e-5


@dataclass(frozen=True)
class DualForm:
    """What the dual form needs to know of a spec: its kind (no formulas) and the printed
    element-wise pieces of its derivation."""

    chunk: int
    depth: int
    residual: bool
    norm: bool
    retention: str  # none | decay | l2 | lq
    momentum: bool
    first: bool
    clip: float | None
    lq: float | None  # q of lq retention
    bias_grad: Callable
    bias_vjp: Callable
    act: Callable | None = None
    act_grad: Callable | None = None
    act_grad2: Callable | None = None


# ---- element-wise helpers ------------------------------------------------------------------


def _ln(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm's normalised values and reciprocal deviation over the last dimension."""
    centered = m - m.mean(-1, keepdim=True)
    rstd = torch.rsqrt((centered * centered).mean(-1, keepdim=True) + LN_EPS)
    return centered * rstd, rstd


def _ln_back(xhat: torch.Tensor, rstd: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint of LayerNorm's input given the adjoint g of xhat (the Jacobian is
    symmetric, so this is also the adjoint of g through this very map)."""
    return rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))


def _lq_parts(a: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(||A||_q^(q-2), sum |A|^q, |A|^(q-2) A) per matrix; a zero matrix gets normaliser 1
    (W = 0). The sum goes through |A|^(q-2): torch computes small integer and half-integer
    powers with products, while |A|^4 itself goes through exp and log, ~30x slower. A zero
    entry's |A|^(q-2) A is 0 (for q < 2 the power alone is inf, and inf * 0 is nan)."""
    magnitude = a.abs()
    p = torch.where(magnitude > 0, magnitude, 1.0).pow(q - 2.0).mul_(a)
    s = (p * a).sum((-2, -1), keepdim=True)
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, 1.0).pow((q - 2.0) / q), 1.0), s, p


def _lq_norm(a: torch.Tensor, q: float) -> torch.Tensor:
    """||A||_q^(q-2) per matrix (1 for a zero matrix)."""
    return _lq_parts(a, q)[0]


def _clip_factor(sq: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """f(s) = c tanh(sqrt(s)/c) / sqrt(s) (1 at s = 0) and df/ds (-1/(3c^2) at 0)."""
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    r = torch.sqrt(safe)
    t = torch.tanh(r / c)
    f = torch.where(positive, c * t / r, torch.ones_like(sq))
    df = torch.where(
        positive, ((1 - t * t) - f) / (2 * safe), torch.full_like(sq, -1 / (3 * c * c))
    )
    return f, df


# ---- the surprise of a chunk and its vector-Jacobian product -------------------------------


@dataclass
class Surprise:
    """The rank-one factors of each token's surprise, g_l = a_l (outer) deltas_l, and what the
    backward pass reads of how they were made. Leading dims [B, H, C] or [B, H, N, C]."""

    a: list  # the layers' inputs, a_0 = k
    u: list | None  # a_l @ W_l before the retained factor rho (kept with `first` only)
    z: list  # pre-activations, rho * u_l
    dact: list  # sigma'(z_l), l < L-1
    back: list  # delta_{l+1} @ W_{l+1}^T, l < L-1
    raw: list  # the deltas before the clip
    deltas: list  # the deltas after the clip
    y: torch.Tensor
    g: torch.Tensor  # dl/dy
    xhat: torch.Tensor | None = None
    rstd: torch.Tensor | None = None
    f: torch.Tensor | None = None  # the clip's factor
    df: torch.Tensor | None = None


def surprise(cfg: DualForm, ws, k, v, rho, params, gamma, beta) -> Surprise:
    """Each token's surprise at the anchor weights `ws` (the template's `surprise`, keeping
    its intermediates); rho [.., C, 1] with `first`, else None."""
    L = cfg.depth
    a, u, z = [k], [], []
    for li in range(L):
        u.append(a[li] @ ws[li])
        z.append(u[li] * rho if cfg.first else u[li])
        if li < L - 1:
            a.append(cfg.act(z[li]))
    xhat = rstd = None
    if cfg.norm:
        xhat, rstd = _ln(z[-1])
        out = xhat * gamma + beta
    else:
        out = z[-1]
    y = k + out if cfg.residual else out
    g = cfg.bias_grad(y, v, *params)
    raw = [None] * L
    raw[-1] = _ln_back(xhat, rstd, g * gamma) if cfg.norm else g
    back, dact = [None] * (L - 1), [None] * (L - 1)
    for li in range(L - 2, -1, -1):
        back[li] = raw[li + 1] @ ws[li + 1].transpose(-1, -2)
        dact[li] = cfg.act_grad(z[li])
        raw[li] = back[li] * dact[li] * rho if cfg.first else back[li] * dact[li]
    sur = Surprise(a, u if cfg.first else None, z, dact, back, raw, raw, y, g, xhat, rstd)
    if cfg.clip is not None:
        sq = sum((x * x).sum(-1, keepdim=True) * (d * d).sum(-1, keepdim=True)
                     for x, d in zip(a, raw, strict=False))  # fmt: skip
        sur.f, sur.df = _clip_factor(sq, cfg.clip)  # sq: the whole gradient's squared norm
        sur.deltas = [d * sur.f for d in raw]
    return sur


@dataclass
class SurpriseGrads:
    """Adjoints of one chunk's surprise inputs."""

    ws: list
    k: torch.Tensor
    v: torch.Tensor
    params: list
    rho: torch.Tensor | None
    gamma: torch.Tensor | None  # per token, [.., C, Dv]; summed by the caller
    beta: torch.Tensor | None


def _unclip(cfg: DualForm, s: Surprise, ab: list, db: list) -> list:
    """Adjoints of the raw deltas (and, in place, of the inputs) through the soft clip."""
    if cfg.clip is None:
        return list(db)
    fb = sum((b * d).sum(-1, keepdim=True) for b, d in zip(db, s.raw, strict=False))
    sqb = 2 * fb * s.df
    for li, (x, d) in enumerate(zip(s.a, s.raw, strict=False)):
        ab[li] = ab[li] + sqb * (d * d).sum(-1, keepdim=True) * x
    return [
        b * s.f + sqb * (x * x).sum(-1, keepdim=True) * d
        for b, x, d in zip(db, s.a, s.raw, strict=False)
    ]


def _ln_second(s: Surprise, gamma, w: torch.Tensor, delta: torch.Tensor):
    """Through delta = LNback(xhat, rstd, g * gamma) given its adjoint w: the adjoints of g,
    gamma (per token), and the part of m's adjoint that comes through xhat and rstd."""
    gx = s.g * gamma
    gxb = _ln_back(s.xhat, s.rstd, w)
    mean_m = (gx * s.xhat).mean(-1, keepdim=True)
    xhat_b = -s.rstd * (w * mean_m + (w * s.xhat).mean(-1, keepdim=True) * gx)
    m_extra = -s.rstd * s.xhat * (w * delta).mean(-1, keepdim=True)
    return gxb * gamma, gxb * s.g, xhat_b, m_extra


def surprise_vjp(
    cfg: DualForm, s: Surprise, ws, c: Chunk, gamma, ab, db, acc=None
) -> SurpriseGrads:
    """Reverse mode through `surprise` given the adjoints of its inputs (ab) and deltas (db),
    which it consumes (updates in place): first back through the deltas' chain (sigma'', the
    loss's VJP, LayerNorm's backward-of-backward), then through the memory's forward pass.
    The weights' adjoints are added into `acc` (in place) when given."""
    L, rho = cfg.depth, c.rho
    rb = _unclip(cfg, s, ab, db)
    zb, wb = [None] * L, list(acc) if acc is not None else [None] * L
    rhob = None
    for li in range(L - 1):  # raw_l = back_l * rho * sigma'(z_l), back_l = raw_{l+1} W_{l+1}^T
        t = rb[li] * s.back[li]
        eb = rb[li] * s.dact[li]
        if cfg.first:
            term = (t * s.dact[li]).sum(-1, keepdim=True)
            rhob = term if rhob is None else rhob + term
            eb.mul_(rho)
            t.mul_(rho)
        zb[li] = t.mul_(cfg.act_grad2(s.z[li]))
        add_mm(rb[li + 1], eb, ws[li + 1])
        wb[li + 1] = accumulate(wb[li + 1], eb, s.raw[li + 1])
    grads = SurpriseGrads(wb, None, None, [], rhob, None, None)
    if cfg.norm:
        gb, grads.gamma, xhat_b, m_extra = _ln_second(s, gamma, rb[-1], s.raw[-1])
    else:
        gb = rb[-1]
    yb, grads.v, *grads.params = cfg.bias_vjp(s.y, c.v, gb, *c.params)
    if cfg.norm:  # y = (k +) xhat * gamma + beta
        grads.gamma = grads.gamma + yb * s.xhat
        grads.beta = yb
        zb[-1] = _ln_back(s.xhat, s.rstd, xhat_b + yb * gamma) + m_extra
    else:
        zb[-1] = yb
    _memory_vjp(cfg, s, ws, rho, ab, zb, grads)
    grads.k = ab[0].add_(yb) if cfg.residual else ab[0]
    return grads


def _memory_vjp(cfg: DualForm, s: Surprise, ws, rho, ab, zb, grads: SurpriseGrads) -> None:
    """Back through the memory's forward pass z_l = rho * (a_l @ W_l), a_{l+1} = sigma(z_l),
    accumulating into `ab` (the inputs' adjoints, in place) and `grads` (weights, rho)."""
    for li in range(cfg.depth - 1, -1, -1):
        if li < cfg.depth - 1:
            zb[li].addcmul_(ab[li + 1], s.dact[li])
        ub = zb[li]
        if cfg.first:
            term = (ub * s.u[li]).sum(-1, keepdim=True)
            grads.rho = term if grads.rho is None else grads.rho + term
            ub = ub * rho
        grads.ws[li] = accumulate(grads.ws[li], s.a[li], ub)
        add_mm(ab[li], ub, ws[li].transpose(-1, -2))


# ---- the reads of a chunk and their vector-Jacobian product --------------------------------


@dataclass
class Chunk:
    """One chunk's inputs: tokens [B, H, C, D], per-token factors [B, H, C, 1], the decay
    matrix D [B, H, C, C] and the update's coefficients."""

    x: torch.Tensor  # scale * q
    k: torch.Tensor
    v: torch.Tensor
    rho: torch.Tensor | None
    params: list
    a: torch.Tensor
    b: torch.Tensor | None
    D: torch.Tensor
    aC: torch.Tensor  # [B, H, 1, 1]
    bC: torch.Tensor | None
    hC: torch.Tensor | None
    Dl: torch.Tensor  # the last row of D, [B, H, C, 1]
    Dm: torch.Tensor | None  # the momentum's, [B, H, C, 1]


@dataclass
class Read:
    """A chunk's reads, Z_l = (a * (H_l W_l) + b * (H_l S_l) - (D * M_l) Delta_l) / n_l with
    M_l = H_l I_l^T, and what their reverse needs."""

    h: list  # the layers' inputs, h_0 = x
    m: list  # M_l
    z: list  # Z_l
    out: torch.Tensor
    xhat: torch.Tensor | None = None
    rstd: torch.Tensor | None = None


def finish(cfg: DualForm, m, x, gamma, beta):
    """The memory's output from the last pre-activation: (out, xhat, rstd)."""
    xhat = rstd = None
    if cfg.norm:
        xhat, rstd = _ln(m)
        m = xhat * gamma + beta
    return (x + m if cfg.residual else m), xhat, rstd


def finish_vjp(cfg: DualForm, xhat, rstd, gamma, go):
    """(adjoint of the last pre-activation, of gamma per token, of beta per token)."""
    if not cfg.norm:
        return go, None, None
    return _ln_back(xhat, rstd, go * gamma), go * xhat, go


def read(cfg: DualForm, c: Chunk, ws, ss, inputs, deltas, norms, gamma, beta) -> Read:
    """Every token's read after its write, at the states a_t W + b_t S - sum_s D[t, s] g_s."""
    h, m, z = [c.x], [], []
    for li in range(cfg.depth):
        zl = c.a * (h[li] @ ws[li])
        if cfg.momentum:
            zl = zl + c.b * (h[li] @ ss[li])
        m.append(h[li] @ inputs[li].transpose(-1, -2))
        zl = zl - (c.D * m[li]) @ deltas[li]
        z.append(zl / norms[li] if cfg.lq else zl)
        if li < cfg.depth - 1:
            h.append(cfg.act(z[li]))
    out, xhat, rstd = finish(cfg, z[-1], c.x, gamma, beta)
    return Read(h, m, z, out, xhat, rstd)


@dataclass
class ReadGrads:
    """Adjoints from a chunk's reads (those of the weights and of the surprise's inputs and
    deltas are accumulated into the caller's tensors)."""

    x: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor | None
    D: torch.Tensor
    norms: list
    gamma: torch.Tensor | None
    beta: torch.Tensor | None


def _flat3(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *t.shape[-2:])


def add_mm(acc: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """acc += alpha x @ y, in place (acc contiguous, [.., m, n])."""
    acc.view(-1, *acc.shape[-2:]).baddbmm_(_flat3(x), _flat3(y), alpha=alpha)
    return acc


def accumulate(acc, x, y, alpha: float = 1.0):
    """acc + alpha x^T @ y over the token dimension, in place when `acc` is a tensor (it must
    be contiguous); a new tensor when it is None."""
    if acc is None:
        product = x.transpose(-1, -2) @ y
        return product if alpha == 1.0 else product.mul_(alpha)
    return add_mm(acc, x.transpose(-1, -2), y, alpha)


def _dot(x: torch.Tensor, y: torch.Tensor, scratch: dict | None = None) -> torch.Tensor:
    """<x, y> per matrix, [B, H, 1, 1]; the product goes into a reused buffer of `scratch`."""
    if scratch is None:
        return (x * y).sum((-2, -1), keepdim=True)
    buf = scratch.get(x.shape)
    if buf is None:
        buf = scratch[x.shape] = torch.empty_like(x)
    return torch.mul(x, y, out=buf).sum((-2, -1), keepdim=True)


def read_vjp(cfg: DualForm, c: Chunk, r: Read, state, sur_ins, norms, go, gamma, acc) -> ReadGrads:
    """Reverse of `read` given the adjoint `go` of its output. `state` is (ws, ss), `sur_ins`
    the surprise's (inputs, deltas), `acc` the adjoints (gw, gs, ab, db) of the start state
    and of the surprise's inputs and deltas, which this adds into, in place."""
    (ws, ss), (inputs, deltas), (gw, gs, ab, db) = state, sur_ins, acc
    zb, gamma_b, beta_b = finish_vjp(cfg, r.xhat, r.rstd, gamma, go)
    g = ReadGrads(None, 0.0, 0.0, 0.0, [], gamma_b, beta_b)
    for li in range(cfg.depth - 1, -1, -1):
        yb = zb
        if cfg.lq:
            g.norms.insert(0, -_dot(zb, r.z[li]) / norms[li])
            yb = zb / norms[li]
        hb = yb @ ws[li].transpose(-1, -2)
        g.a = g.a + (r.h[li] * hb).sum(-1, keepdim=True)
        hb.mul_(c.a)
        accumulate(gw[li], r.h[li], yb * c.a)
        if cfg.momentum:
            back = yb @ ss[li].transpose(-1, -2)
            g.b = g.b + (r.h[li] * back).sum(-1, keepdim=True)
            hb.addcmul_(back, c.b)
            accumulate(gs[li], r.h[li], yb * c.b)
        gm = yb @ deltas[li].transpose(-1, -2)  # minus the adjoint of D * M
        add_mm(db[li], (c.D * r.m[li]).transpose(-1, -2), yb, alpha=-1.0)
        g.D = g.D - gm * r.m[li]
        gm.mul_(c.D)
        add_mm(hb, gm, inputs[li], alpha=-1.0)
        add_mm(ab[li], gm.transpose(-1, -2), r.h[li], alpha=-1.0)
        if li > 0:
            zb = hb.mul_(cfg.act_grad(r.z[li - 1]))
    g.x = hb + go if cfg.residual else hb
    return g


def point_read(cfg: DualForm, ws, x, gamma, beta) -> Read:
    """f(W; x) at fixed weights, with what its reverse needs."""
    h, z = [x], []
    for li, w in enumerate(ws):
        z.append(h[li] @ w)
        if li < cfg.depth - 1:
            h.append(cfg.act(z[li]))
    out, xhat, rstd = finish(cfg, z[-1], x, gamma, beta)
    return Read(h, [], z, out, xhat, rstd)


def point_read_vjp(cfg: DualForm, r: Read, ws, go, gamma, acc: list | None = None):
    """Reverse of `point_read`: (adjoints of the weights, added into `acc` in place when
    given; of x; of gamma and beta per token)."""
    zb, gamma_b, beta_b = finish_vjp(cfg, r.xhat, r.rstd, gamma, go)
    wb = list(acc) if acc is not None else [None] * cfg.depth
    for li in range(cfg.depth - 1, -1, -1):
        wb[li] = accumulate(wb[li], r.h[li], zb)
        hb = zb @ ws[li].transpose(-1, -2)
        zb = hb * cfg.act_grad(r.z[li - 1]) if li > 0 else None
    return wb, (hb + go if cfg.residual else hb), gamma_b, beta_b


# ---- the state update and its reverse ------------------------------------------------------


def update(cfg: DualForm, c: Chunk, ws, ss, sur: Surprise):
    """The state at the chunk's end, W' = aC W + bC S - I^T (Dl * Delta), S' = hC S -
    I^T (Dm * Delta)."""
    new_ws, new_ss = [], []
    for li, (x, d) in enumerate(zip(sur.a, sur.deltas, strict=False)):
        w = ws[li] * c.aC
        if cfg.momentum:
            w.addcmul_(ss[li], c.bC)
            new_ss.append(accumulate(ss[li] * c.hC, x, c.Dm * d, alpha=-1.0))
        new_ws.append(accumulate(w, x, c.Dl * d, alpha=-1.0))
    return new_ws, new_ss


@dataclass
class UpdateGrads:
    aC: torch.Tensor
    bC: torch.Tensor | None
    hC: torch.Tensor | None
    Dl: torch.Tensor
    Dm: torch.Tensor | None


def update_vjp(cfg: DualForm, c: Chunk, start, sur: Surprise, g_end, scratch=None):
    """Reverse of `update` given the adjoints g_end = (gw, gs) of the end state: returns the
    coefficients', the inputs' and the deltas' adjoints (new tensors), and turns g_end, in
    place, into the start state's share (for the caller to accumulate the rest into)."""
    (w0, s0), (gw, gs) = start, g_end
    g = UpdateGrads(0.0, 0.0 if cfg.momentum else None, 0.0 if cfg.momentum else None, 0.0, None)
    ab, db = [], []
    for li, (x, d) in enumerate(zip(sur.a, sur.deltas, strict=False)):
        ab.append((d * -c.Dl) @ gw[li].transpose(-1, -2))
        xw = x @ gw[li]
        g.Dl = g.Dl - (d * xw).sum(-1, keepdim=True)
        db.append(xw.mul_(-c.Dl))
        g.aC = g.aC + _dot(gw[li], w0[li], scratch)
        if cfg.momentum:
            add_mm(ab[li], d * -c.Dm, gs[li].transpose(-1, -2))
            xs = x @ gs[li]
            g.Dm = (0.0 if g.Dm is None else g.Dm) - (d * xs).sum(-1, keepdim=True)
            db[li].addcmul_(xs, c.Dm, value=-1.0)
            g.bC = g.bC + _dot(gw[li], s0[li], scratch)
            g.hC = g.hC + _dot(gs[li], s0[li], scratch)
    for w, s in zip(gw, gs, strict=False):
        s.mul_(c.hC).addcmul_(w, c.bC)
    for w in gw:
        w.mul_(c.aC)
    return g, ab, db


def lq_base_vjp(a: torch.Tensor, wb, nb, q: float, acc=None) -> torch.Tensor:
    """The adjoint of A given those of W = A / n (wb, or None) and of n = ||A||_q^(q-2) (nb,
    or None); added into `acc` (in place) when given."""
    n, s, p = _lq_parts(a, q)
    coeff = 0.0 if nb is None else nb
    if wb is not None:
        coeff = coeff - _dot(wb, a) / (n * n)
    dn = torch.where(
        s > 0, (q - 2.0) * n / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s)
    )
    out = p.mul_(coeff * dn) if acc is None else acc.addcmul_(p, coeff * dn)
    return out if wb is None else out.addcmul_(wb, 1.0 / n)
