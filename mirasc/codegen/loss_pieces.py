"""Which symbolic pieces the vector-Jacobian product of dl/dy needs, chosen once for every
target printer (torch and Triton print them their own way): the element-wise vectors and the
per-token scalars, each only where it is not identically zero."""

from __future__ import annotations

from ..derivation.symbolic import BiasPieces, V, d


def _nonzero(e) -> bool:
    return e != 0


def vjp_vectors(b: BiasPieces, used: tuple) -> dict:
    """The element-wise pieces the VJP needs: phi_i (for S), phi_i', phi_i'', d phi_i'/dv,
    d phi_i'/dp, d phi_i/dv and d phi_i/dp, each only where not identically zero."""
    vec = {f"_phi{i}": b.values[i] for i in used}
    for i in range(len(b.phi)):
        for name, e in (("_dphi", b.dphi[i]), ("_d2phi", b.d2phi[i]), ("_dphiv", b.dphi_dv[i])):
            if _nonzero(e):
                vec[f"{name}{i}"] = e
        for j in range(len(b.params)):
            if _nonzero(b.dphi_dparam[i][j]):
                vec[f"_dphip{i}_{j}"] = b.dphi_dparam[i][j]
    for i in used:
        if _nonzero(d(b.phi[i], V)):
            vec[f"_phiv{i}"] = d(b.phi[i], V)
        for j, p in enumerate(b.params):
            if _nonzero(d(b.phi[i], p)):
                vec[f"_phip{i}_{j}"] = d(b.phi[i], p)
    return vec


def vjp_scalars(b: BiasPieces, used: tuple) -> dict:
    """Per-token scalars: g_i = dg/dS_i, h_ij = d2g/dS_i dS_j, gp_ij = d g_i / d p_j."""
    m, n = len(b.phi), len(b.params)
    scal = {f"_g{i}": b.dg[i] for i in range(m)}
    scal.update(
        {
            f"_h{i}_{j}": b.d2g[i * m + j]
            for i in range(m)
            for j in used
            if _nonzero(b.d2g[i * m + j])
        }
    )
    scal.update(
        {
            f"_gp{i}_{j}": b.dg_dparam[i][j]
            for i in range(m)
            for j in range(n)
            if _nonzero(b.dg_dparam[i][j])
        }
    )
    return scal
