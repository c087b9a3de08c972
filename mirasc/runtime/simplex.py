"""kl retention's chunked form (docs/semantics.md §3): one weight matrix's per-token states of a
chunk, built in the log domain, and each token's read through its own state, with a backward
pass that never materialises the states' adjoints.

Within a chunk every gradient is taken at the anchor, so the mirror step's logits are linear in
them: Z_t = keep_t log W° + P_t d, with P_t [in, c] and d [c, out] the chunk's gate-weighted
rank-one factors. The state is W_t = softmax_rows(Z_t) and the layer reads y_t = x_t W_t.
"""

from __future__ import annotations

import torch


class _MirrorRead(torch.autograd.Function):
    """(y, W_last) from (keep, log_w, P, d, x); shapes below, with leading batch dimensions."""

    @staticmethod
    def forward(ctx, keep, log_w, P, d, x):
        Z = P @ d.unsqueeze(-3)  # [.., c, in, out]
        Z.addcmul_(keep[..., None, None], log_w.unsqueeze(-3))
        W = torch.softmax(Z, dim=-1)
        del Z
        y = (x.unsqueeze(-2) @ W).squeeze(-2)
        ctx.save_for_backward(keep, log_w, P, d, x, W)
        return y, W[..., -1, :, :].clone()

    @staticmethod
    def backward(ctx, gy, g_last):
        keep, log_w, P, d, x, W = ctx.saved_tensors
        r = W @ gy.unsqueeze(-1)  # [.., c, in, 1]: row i's mean of gy under W_t, and dy/dx
        # through the read and the row softmax: dZ[i, j] = x_i W_ij (gy_j - r_i)
        # in W's (contiguous) layout: a broadcast result may come out permuted, and every
        # flatten below would then copy the [c, in, out] tensor
        gZ = torch.sub(gy.unsqueeze(-2), r, out=torch.empty_like(W))
        gZ.mul_(W).mul_(x.unsqueeze(-1))
        w = W[..., -1, :, :]  # the last state is an output too
        gZ[..., -1, :, :] += w * (g_last - (g_last * w).sum(-1, keepdim=True))
        flat = gZ.flatten(-2)  # [.., c, in * out]
        g_keep = (flat @ log_w.flatten(-2).unsqueeze(-1)).squeeze(-1)
        g_log_w = (keep.unsqueeze(-2) @ flat).view_as(log_w)
        g_P = gZ @ d.unsqueeze(-3).transpose(-1, -2)
        # dL/dd[s, j] = sum over (t, i) of P[t, i, s] gZ[t, i, j]: one matmul
        g_d = P.movedim(-1, -3).flatten(-2) @ gZ.flatten(-3, -2)
        return g_keep, g_log_w, g_P, g_d, r.squeeze(-1)


def mirror_read(
    keep: torch.Tensor, log_w: torch.Tensor, P: torch.Tensor, d: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads of one weight matrix's per-token states over a chunk of c tokens, and its last state.

    keep [.., c] are the keep factors' running products, log_w [.., in, out] the log of the
    chunk's starting state, P [.., c, in, c] and d [.., c, out] the factors of the summed
    gradient steps, x [.., c, in] the tokens' inputs to this layer. Returns y [.., c, out] with
    y_t = x_t softmax_rows(keep_t log_w + P_t d), and that state at the chunk's last token."""
    return _MirrorRead.apply(keep, log_w, P, d, x)
