"""The host side of the chunked dual-form kernels of an MLP memory of three or more layers (a
generated `triton_backend.py` supplies the forward and backward kernels, printed per spec and
unrolled over its layers). The math is `mlp_chunk`'s: per chunk every gradient is taken at the
chunk's start state, with the same coefficients; what differs is where a chunk's
intermediates live. A two-layer memory's fit in registers a tile of hidden units at a time; a
deeper one's (each hidden layer [chunk x hidden], its deltas, its reads and, backward, their
adjoints) go through a scratch buffer per program, in global memory (L2-resident: a few
hundred KB at chunk 16), every product a tensor-core gemm over its tiles. Activation memory
is `mlp_chunk`'s: the state at each chunk's start, saved only when a gradient is needed.

Under kl retention (`DeepKlChunk`) the surprise and its reverse are the same; the reads and the
update are `kl_chunk`'s (each token's state a row softmax of the anchor's logits plus the
chunk's rank-one factors), walked a tile of each layer's state at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dual_chunk import _pow2
from .kl_chunk import KlChunk
from .mlp_chunk import MlpChunk

GEMM_TILE = 64  # the widest tile of the kernels' products in any dimension
# the widest tile of a layer's state the kl softmaxes walk: at D = 64 (sm_90) their backward
# kernel spills 652 B per thread, 154 spill instructions in loops, with 64; 148 B and none
# with 32 (16 spilled no less)
KL_TILE = 32


def _tile(n: int) -> int:
    """A gemm tile for a dimension of n: a power of two from 16 (tl.dot's least) to GEMM_TILE."""
    return min(GEMM_TILE, _pow2(n))


class ScratchTiles:
    """What the deep kernels share whatever their retention: compile-time constants, launch
    settings and the per-program scratch buffers, `scratch` giving a program's floats from
    (DK, DV, HID, BT), as the generated backend prints it from the kernels' buffer list."""

    shapes: Callable
    chunk: int
    scratch: Callable

    def meta(self, Dk: int, Dv: int, dot, backward: bool = False) -> dict:
        """The kernels' compile-time constants: sizes, the loss's row tiles (BK, BV) and the
        products' tiles per width (TK, TV, TH, TT)."""
        hidden = self.shapes(Dk, Dv)[0][1]
        C = self.chunk
        return dict(DK=Dk, DV=Dv, HID=hidden, BK=_pow2(Dk), BV=_pow2(Dv), BT=C, TK=_tile(Dk),
                    TV=_tile(Dv), TH=_tile(hidden), TT=_tile(C), DOT=dot)  # fmt: skip

    @staticmethod
    def launch_options(Dk: int, Dv: int) -> dict:
        """8 warps: fewer spill bytes than 4 at Dk = Dv = 64, none in loops (gpu_static.py)."""
        return dict(num_warps=8, num_stages=1)

    def _scratch(self, q, v) -> torch.Tensor:
        Dk, Dv = q.shape[-1], v.shape[-1]
        floats = self.scratch(Dk, Dv, self.shapes(Dk, Dv)[0][1], self.chunk)
        return torch.empty((q.shape[0] * q.shape[2], floats), dtype=torch.float32, device=q.device)


class DeepChunk(ScratchTiles, MlpChunk):
    """`MlpChunk`'s op pair, autograd formula and contract for the deep kernels."""

    def __init__(self, namespace: str, kernels: tuple, *, shapes: Callable, chunk: int,
                 retention: str, momentum: bool, required_state: str,
                 scratch: Callable):  # fmt: skip
        super().__init__(namespace, kernels, shapes=shapes, chunk=chunk, retention=retention,
                         momentum=momentum, required_state=required_state)  # fmt: skip
        self.scratch = scratch

    def launch_forward(self, q, k, v, coef, ends, d, params, state, anchor, ln, scale: float,
                       save: bool, offset: int):  # fmt: skip
        """`MlpChunk.launch_forward`'s, with the kernel's scratch."""
        NT = ends.shape[-1]
        o, final, hs, ns = out = self.forward_buffers(q, v, state, NT, save)
        args = (q, k, v, coef, ends, d, params, final, anchor, ln, o, hs, ns, self._scratch(q, v),
                scale, q.shape[1], q.shape[2], coef.shape[-1], NT, offset)  # fmt: skip
        self._launch(self.forward_kernel, args, q, v, SAVE=save, CONT=offset > 0)
        return out

    def launch_backward(self, q, k, v, coef, ends, d, params, hs, ns, final, ln, do, dfinal,
                        scale: float):  # fmt: skip
        """`MlpChunk.launch_backward`'s, with the kernel's scratch."""
        grads = self.backward_buffers(q, k, v, coef, ends, d, params, dfinal)
        args = (q, k, v, coef, ends, d, params, hs, ns, final, ln, do, grads[7], self._scratch(q, v),
                *grads[:7], grads[8], scale, q.shape[1], q.shape[2], coef.shape[-1],
                ends.shape[-1])  # fmt: skip
        self._launch(self.backward_kernel, args, q, v)
        return self.backward_results(q, k, v, grads)


class DeepKlChunk(ScratchTiles, KlChunk):
    """`KlChunk`'s op pair, autograd formula and contract for the deep kl kernels, which take
    the deep kernels' scratch forward and backward."""

    def __init__(self, namespace: str, kernels: tuple, *, shapes: Callable, chunk: int,
                 required_state: str, scratch: Callable):  # fmt: skip
        super().__init__(namespace, kernels, shapes=shapes, chunk=chunk,
                         required_state=required_state)  # fmt: skip
        self.scratch = scratch

    def meta(self, Dk: int, Dv: int, dot, backward: bool = False) -> dict:
        """The deep kernels' constants, and the tiles of each layer's state the softmaxes walk
        (KK, KV, KH: rows of Dk, columns of Dv, hidden units)."""
        hidden = self.shapes(Dk, Dv)[0][1]
        kl = dict(KK=min(KL_TILE, _pow2(Dk)), KV=min(KL_TILE, _pow2(Dv)),
                  KH=min(KL_TILE, _pow2(hidden)))  # fmt: skip
        return {**super().meta(Dk, Dv, dot, backward), **kl}

    def forward_scratch(self, q, v) -> tuple:
        return (self._scratch(q, v),)

    def backward_scratch(self, q, v) -> torch.Tensor:
        return self._scratch(q, v)
