"""The chunked dual form with an explicit backward pass, for every spec whose update is linear
in the gradients (gd / momentum with none, decay, l2 retention, MONETA's lq; any depth,
residual, LayerNorm, `first`, `clip`).

Inputs are laid out chunk-major, [N, B, H, C, D]: a continued chunk is padded in front and a
ragged last chunk at the back, so no direction slices or zero-fills per chunk. The gate
products of all chunks come at once from `runtime.products` (autograd differentiates them,
a few batched ops). What is sequential is one autograd.Function: per chunk, the surprise at
the anchor state, the reads (read after write) and the state update. Its forward pass keeps
only the state at each chunk start (O(T/C |state|)) besides its O(T D) inputs; its backward
pass walks the chunks in reverse, recomputes each chunk's surprise and reads from that state
and applies the reverse of each (`chunk_math`), the inner gradient step included.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .chunk_math import (
    Chunk,
    DualForm,
    _lq_norm,
    lq_base_vjp,
    point_read,
    point_read_vjp,
    read,
    read_vjp,
    surprise,
    surprise_vjp,
    update,
    update_vjp,
)
from .inputs import products


@dataclass
class Blocks:
    """Every chunk's inputs, chunk-major: tokens [N, B, H, C, D], per-token factors
    [N, B, H, C, 1], D [N, B, H, C, C], the update's coefficients; then LayerNorm's gain and
    bias [1, H, 1, Dv], the loss's gate parameters, the starting state and the anchor of a
    continued first chunk."""

    x: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    rho: torch.Tensor | None
    a: torch.Tensor
    b: torch.Tensor | None
    D: torch.Tensor
    aC: torch.Tensor
    bC: torch.Tensor | None
    hC: torch.Tensor | None
    Dl: torch.Tensor
    Dm: torch.Tensor | None
    gamma: torch.Tensor | None
    beta: torch.Tensor | None
    params: list
    state: list
    anchor: list

    def flat(self) -> tuple:
        """The tensors in order, for autograd.Function.apply, and their list lengths."""
        lists = (self.params, self.state, self.anchor)
        head = tuple(getattr(self, f.name) for f in fields(self)[:-3])
        return (*head, *self.params, *self.state, *self.anchor), tuple(len(x) for x in lists)

    @classmethod
    def unflat(cls, tensors, sizes) -> Blocks:
        n = len(fields(cls)) - 3
        head, rest, lists = list(tensors[:n]), list(tensors[n:]), []
        for size in sizes:
            lists.append(rest[:size])
            rest = rest[size:]
        return cls(*head, *lists)

    def chunk(self, n: int) -> Chunk:
        def at(t):
            return None if t is None else t[n]

        return Chunk(
            self.x[n], self.k[n], self.v[n], at(self.rho), [p[n] for p in self.params],
            self.a[n], at(self.b), self.D[n], self.aC[n], at(self.bC), at(self.hC),
            self.Dl[n], at(self.Dm),
        )  # fmt: skip


def _anchor_of(cfg: DualForm, blk: Blocks, n: int, continuing: bool, ws):
    """Chunk n's anchor base (its start state, or the anchor of a continued chunk), anchor
    weights and MONETA's normalisers of the base."""
    bases = blk.anchor if continuing and n == 0 else ws
    if not cfg.lq:
        return bases, bases, None
    norms = [_lq_norm(b, cfg.lq) for b in bases]
    return bases, [b / m for b, m in zip(bases, norms, strict=False)], norms


def _normalised(cfg: DualForm, ws) -> tuple[list, list]:
    """MONETA's W = A / ||A||_q^(q-2), and the normalisers."""
    norms = [_lq_norm(w, cfg.lq) for w in ws]
    return [w / m for w, m in zip(ws, norms, strict=True)], norms


def _flatten(objs) -> tuple[list, list]:
    """The tensors of a chunk's record (tensors, lists, dataclasses of those; None dropped)
    and the structure to rebuild it."""
    tensors, spec = [], []
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            spec.append("t")
        elif isinstance(obj, list):
            kept = [t for t in obj if t is not None]
            tensors += kept
            spec.append([t is not None for t in obj])
        elif obj is None:
            spec.append(None)
        else:
            sub, sub_spec = _flatten(getattr(obj, f.name) for f in fields(obj))
            tensors += sub
            spec.append((type(obj), sub_spec))
    return tensors, spec


def _rebuild(tensors, spec: list) -> list:
    """The inverse of `_flatten`; consumes the iterator `tensors`."""
    out = []
    for item in spec:
        if item == "t":
            out.append(next(tensors))
        elif isinstance(item, list):
            out.append([next(tensors) if kept else None for kept in item])
        elif item is None:
            out.append(None)
        else:
            out.append(item[0](*_rebuild(tensors, item[1])))
    return out


class _DualFormFunction(torch.autograd.Function):
    """(o [N, B, H, C, Dv], the final state) of the dual form; see the module docstring. The
    forward pass keeps, per chunk, its start state and the token-sized intermediates of its
    surprise and reads (O(T/C |state|) + O(T D)), for the backward pass to reverse."""

    @staticmethod
    def forward(ctx, cfg, meta, *tensors):
        continuing, last_complete, sizes = meta
        blk = Blocks.unflat(tensors, sizes)
        L, N = cfg.depth, blk.x.shape[0]
        ws, ss = list(blk.state[:L]), list(blk.state[L:])
        outs, kept, specs, ahead = [], [], [], None
        for n in range(N):
            c = blk.chunk(n)
            anchors, norms = ahead if ahead else _anchor_of(cfg, blk, n, continuing, ws)[1:]
            sur = surprise(cfg, anchors, c.k, c.v, c.rho, c.params, blk.gamma, blk.beta)
            r = read(cfg, c, ws, ss, sur.a, sur.deltas, norms, blk.gamma, blk.beta)
            new_ws, new_ss = update(cfg, c, ws, ss, sur)
            out, r.out, ahead = r.out, None, None
            if cfg.lq and (n < N - 1 or last_complete):  # the last token reads the exact end state
                ahead = _normalised(cfg, new_ws)  # the next chunk's anchors and normalisers
                end = point_read(cfg, ahead[0], c.x[..., -1:, :], blk.gamma, blk.beta)
                out = torch.cat([out[..., :-1, :], end.out], dim=-2)
            outs.append(out)
            flat, spec = _flatten([ws, ss, norms, sur, r])
            kept += flat
            specs.append(spec)
            ws, ss = new_ws, new_ss
        ctx.cfg, ctx.meta, ctx.specs, ctx.n_in = cfg, meta, specs, len(tensors)
        ctx.save_for_backward(*tensors, *ws, *ss, *kept)
        ctx.set_materialize_grads(False)
        return (torch.stack(outs), *ws, *ss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_o, *g_final):
        cfg, (continuing, last_complete, sizes) = ctx.cfg, ctx.meta
        saved, n_in = ctx.saved_tensors, ctx.n_in
        blk = Blocks.unflat(saved[:n_in], sizes)
        final, kept = saved[n_in : n_in + len(g_final)], iter(saved[n_in + len(g_final) :])
        records = [_rebuild(kept, spec) for spec in ctx.specs]
        grads = _walk_back(cfg, blk, records, final, g_o, g_final, continuing, last_complete)
        return (None, None, *grads)


def _stack(xs: list):
    """Per-chunk adjoints, collected in reverse, as one chunk-major tensor (None if absent)."""
    return torch.stack(xs[::-1]) if xs and isinstance(xs[0], torch.Tensor) else None


@dataclass
class Normalised:
    """MONETA: a chunk-start state A, its W = A / ||A||_q^(q-2), and the adjoints that chunk
    gathered for W and for the normaliser (its surprise, its reads). The end read of the chunk
    before adds its own to them, so A's adjoint goes through the normaliser once."""

    a: list
    w: list
    wb: list | None = None
    nb: list | None = None

    def settle(self, cfg: DualForm, acc: list | None = None) -> list:
        """A's adjoint, added into `acc` (in place) when given."""
        return [
            lq_base_vjp(a, wb, nb, cfg.lq, out)
            for a, wb, nb, out in zip(self.a, self.wb, self.nb or [None] * len(self.a),
                                      acc or [None] * len(self.a), strict=True)
        ]  # fmt: skip


def _end_read_vjp(cfg: DualForm, blk: Blocks, c: Chunk, end: Normalised, go, gw):
    """MONETA, complete chunk: reverse of its last token's read of the exactly normalised end
    state `end`. Adds the end state's adjoint into gw (in place); returns go without that
    token and the token's adjoints of x, gamma and beta."""
    r = point_read(cfg, end.w, c.x[..., -1:, :], blk.gamma, blk.beta)
    end.wb, xb, gamma_b, beta_b = point_read_vjp(cfg, r, end.w, go[..., -1:, :], blk.gamma, end.wb)
    end.settle(cfg, gw)
    go = torch.cat([go[..., :-1, :], torch.zeros_like(go[..., -1:, :])], dim=-2)
    return go, (xb, gamma_b, beta_b)


def _chunk_back(
    cfg: DualForm, blk: Blocks, n: int, continuing: bool, record, end, g_o, g_end, scratch
):
    """The reverse of chunk n from its record (start state, normalisers, surprise, reads) and,
    for MONETA, its `Normalised` end state. g_end, the end state's adjoints, becomes the start
    state's (in place). Returns the chunk's adjoints, LayerNorm's summed ones, the anchor's
    (or None) and, for MONETA, the start state's `Normalised` for the chunk before (or None)."""
    c, (w0, s0, norms, sur, r), (gw, gs) = blk.chunk(n), record, g_end
    bases = blk.anchor if continuing and n == 0 else w0
    anchors = [b / m for b, m in zip(bases, norms, strict=True)] if cfg.lq else bases
    go = torch.zeros_like(c.v) if g_o is None else g_o[n]
    extra = None
    if end is not None:
        go, extra = _end_read_vjp(cfg, blk, c, end, go, gw)
    ug, ab, db = update_vjp(cfg, c, (w0, s0), sur, (gw, gs), scratch)
    rg = read_vjp(cfg, c, r, (w0, s0), (sur.a, sur.deltas), norms, go, blk.gamma, (gw, gs, ab, db))
    direct = not cfg.lq and not (continuing and n == 0)
    sg = surprise_vjp(cfg, sur, anchors, c, blk.gamma, ab, db, gw if direct else None)
    g_anchor = start = None
    if cfg.lq:
        start = Normalised(bases, anchors, sg.ws, rg.norms)
        if continuing and n == 0:
            g_anchor, start = start.settle(cfg), None
        elif n == 0:  # the initial state: no chunk before to merge with
            start.settle(cfg, gw)
            start = None
    elif not direct:
        g_anchor = sg.ws
    x = rg.x
    if extra is not None:
        x = torch.cat([x[..., :-1, :], x[..., -1:, :] + extra[0]], dim=-2)
    grads = dict(x=x, k=sg.k, v=sg.v, rho=sg.rho, a=rg.a, b=rg.b, D=rg.D, aC=ug.aC, bC=ug.bC,
                 hC=ug.hC, Dl=ug.Dl, Dm=ug.Dm, params=sg.params)  # fmt: skip
    return grads, _ln_sums(cfg, rg, sg, extra), g_anchor, start


def _ln_sums(cfg: DualForm, rg, sg, extra):
    """The chunk's adjoints of LayerNorm's gain and bias, summed over batch and tokens [H, Dv]."""
    if not cfg.norm:
        return None, None
    gamma = [rg.gamma, sg.gamma] + ([extra[1]] if extra is not None else [])
    beta = [rg.beta, sg.beta] + ([extra[2]] if extra is not None else [])
    return tuple(sum(t.sum((0, 2)) for t in ts) for ts in (gamma, beta))


def _walk_back(cfg: DualForm, blk: Blocks, records, final, g_o, g_final, continuing, last_complete):
    """The dual form's backward pass: chunks in reverse, each from its record. Returns the
    adjoints in `Blocks.flat` order."""
    L, N = cfg.depth, blk.x.shape[0]
    g_end = [
        torch.zeros_like(f) if g is None else g.clone()
        for f, g in zip(final, g_final, strict=False)
    ]
    per_chunk, g_anchor, ln, end, scratch = {}, [], [0.0, 0.0], None, {}
    if cfg.lq and last_complete:  # the last token reads the exactly normalised final state
        end = Normalised(list(final[:L]), _normalised(cfg, final[:L])[0])
    for n in range(N - 1, -1, -1):
        grads, sums, anchor, end = _chunk_back(
            cfg, blk, n, continuing, records[n], end, g_o, (g_end[:L], g_end[L:]), scratch
        )
        for name, value in grads.items():
            per_chunk.setdefault(name, []).append(value)
        if cfg.norm:
            ln = [a + b for a, b in zip(ln, sums, strict=False)]
        g_anchor = anchor if anchor is not None else g_anchor
    out = {name: _stack(xs) for name, xs in per_chunk.items() if name != "params"}
    params = [_stack([p[j] for p in per_chunk["params"]]) for j in range(len(blk.params))]
    gamma, beta = (
        (ln[0].reshape(blk.gamma.shape), ln[1].reshape(blk.beta.shape))
        if cfg.norm
        else (None, None)
    )
    head = [
        out[name] for name in ("x", "k", "v", "rho", "a", "b", "D", "aC", "bC", "hC", "Dl", "Dm")
    ]
    return (*head, gamma, beta, *params, *g_end, *g_anchor)


# ---- the parallel parts: gate coefficients and padding, all chunks at once -----------------


def factors(retention: str, lr, rate):
    """Per token, [B, H, T]: what the state keeps and the step size, W_t = keep_t W - e_t g_t
    (before momentum); shared with the chunked Triton kernels' host side."""
    if retention == "none":
        return torch.ones_like(lr), lr
    if retention == "decay":
        return 1.0 - rate, lr
    if retention == "l2":
        keep = 1.0 / (1.0 + lr * rate)
        return keep, lr * keep
    return rate, lr  # lq: A_t = a_t A_{t-1} - e_t g_t


def _end_rows(x: torch.Tensor, last: int, dim: int) -> torch.Tensor:
    """The last row along `dim` of every chunk (chunk-major), row `last` of the last chunk:
    a ragged chunk ends at its last real token."""
    ends = x.select(dim, -1)
    if last == x.shape[dim] - 1:
        return ends
    return torch.cat([ends[:-1], x[-1:].select(dim, last)], dim=0)


def coefficients(momentum: bool, keep, e, mom, offset: int, last: int) -> dict:
    """a, b, D of every chunk (W_t = a_t W + b_t S - sum_s D[t, s] g_s) and the update's
    coefficients, from per-token factors [N, B, H, C]. Padded tokens keep 1, step 0 and have
    momentum 1: no-ops except through b (W_t = W_{t-1} + S_t), so the padding in front of a
    continued chunk is masked out of b, and a chunk ends at its last real token."""
    a, retain = products(keep)
    out = dict(a=a.unsqueeze(-1), aC=_end_rows(a, last, -1)[..., None, None])
    if not momentum:
        D = retain * e.unsqueeze(-2)
        return dict(
            out, b=None, D=D, bC=None, hC=None, Dl=_end_rows(D, last, -2).unsqueeze(-1), Dm=None
        )
    h, carry = products(mom)
    hb = h
    if offset:
        real = torch.ones(h.shape[0], 1, 1, h.shape[-1], dtype=torch.bool, device=h.device)
        real[0, ..., :offset] = False
        hb = torch.where(real, h, torch.zeros_like(h))
    b = (retain @ hb.unsqueeze(-1)).squeeze(-1)
    D = (retain @ carry) * e.unsqueeze(-2)
    return dict(
        out,
        b=b.unsqueeze(-1),
        D=D,
        bC=_end_rows(b, last, -1)[..., None, None],
        hC=_end_rows(h, last, -1)[..., None, None],
        Dl=_end_rows(D, last, -2).unsqueeze(-1),
        Dm=(_end_rows(carry, last, -2) * e).unsqueeze(-1),
    )


def chunk_major(t: torch.Tensor, front: int, back: int, C: int, value: float | None = None):
    """[B, H, T, ..] -> chunk-major [N, B, H, C, ..]. Gates ([B, H, T]) are padded with
    `value`; everything else (and gates with value None) with copies of the edge token, which
    keeps padded surprises finite."""
    if front or back:
        if value is not None:
            t = F.pad(t, (front, back), value=value)
        elif t.dim() == 3:
            t = F.pad(t, (front, back), mode="replicate")
        else:
            t = F.pad(t, (0, 0, front, back), mode="replicate")
    return t.unflatten(2, (-1, C)).movedim(2, 0)


def dual_form(
    cfg: DualForm, q, k, v, *, lr, rate, mom, params: dict, state, scale, ln, anchor_state, offset
) -> tuple[torch.Tensor, list]:
    """The chunked dual form over q, k [B, H, T, Dk], v [B, H, T, Dv] and gates [B, H, T]:
    (o [B, H, T, Dv], the final state). A call continuing a chunk (`offset` > 0) takes that
    chunk's gradients at `anchor_state`."""
    T, C = q.shape[2], cfg.chunk
    N = -(-(offset + T) // C)
    pads = (offset, N * C - offset - T, C)
    keep, e = factors(cfg.retention, lr, rate)
    rho = 1.0 - rate if cfg.first else None  # the retained factor the gradient is taken at
    coef = coefficients(
        cfg.momentum,
        chunk_major(keep, *pads, value=1.0),
        chunk_major(e, *pads, value=0.0),
        chunk_major(mom, *pads, value=1.0) if cfg.momentum else None,
        offset,
        (offset + T - 1) % C,
    )
    gamma, beta = (None, None) if ln is None else ln
    blk = Blocks(
        *(chunk_major(t, *pads).contiguous() for t in (scale * q, k, v)),
        None if rho is None else chunk_major(rho, *pads, value=1.0).unsqueeze(-1),
        **coef,
        gamma=gamma,
        beta=beta,
        params=[chunk_major(p, *pads).unsqueeze(-1) for p in params.values()],
        state=list(state),
        anchor=list(anchor_state) if offset else [],
    )
    tensors, sizes = blk.flat()
    meta = (offset > 0, (offset + T) % C == 0, sizes)
    o, *final = _DualFormFunction.apply(cfg, meta, *tensors)
    return o.movedim(0, 2).flatten(2, 3)[:, :, offset : offset + T], final
