"""The generated layers' shared machinery: `MemoryLayer` (projections, short convolutions,
gates, the learned starting memory, decoding caches) that each generated layer subclasses."""

from __future__ import annotations

from itertools import pairwise
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ir.spec import INIT_GRID


class MemoryCache(NamedTuple):
    """A layer's decoding state: memory state, the anchor state and offset of the chunk in
    progress (offset 0: none), and the short convolutions' last inputs."""

    memory: tuple | None = None
    anchor: tuple | None = None
    offset: int = 0
    conv: tuple = (None, None, None)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class ShortConvolution(nn.Module):
    """Depthwise causal 1-D convolution over time, then SiLU (fla/Mamba convention).

    `forward(x, cache)` takes and returns the last `kernel_size - 1` inputs, so a sequence split
    across calls gives the same result as one call.
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel_size) / kernel_size**0.5)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        B, _T, C = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.kernel_size - 1, C)
        full = torch.cat([cache, x], dim=1)
        y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=C).transpose(1, 2)
        return F.silu(y), full[:, full.shape[1] - (self.kernel_size - 1) :]


class MemoryLayer(nn.Module):
    """A compiled memory as a token mixer for [B, T, hidden] inputs: projections for q, k, v
    and each gate, optional short convolution and q/k L2 norm, the memory op, then a per-head
    RMSNorm, an output gate and the output projection. Each gate is its spec formula applied to
    a learned linear pre-activation z = W_g x. A generated subclass sets the class attributes.
    """

    op: ClassVar  # the generated op, as a staticmethod
    read: ClassVar  # the generated read-only op, as a staticmethod
    chunk: ClassVar[int]
    gate_formulas: ClassVar[dict]  # gate name -> formula of z
    gate_targets: ClassVar[dict]  # gate name -> value its formula should start near
    layer_norm: ClassVar[bool]  # the memory has a LayerNorm (gain and bias are learned here)
    initial_kind: ClassVar[str]  # "zeros", "learned", or "simplex" (softmax of learned logits)
    depth: ClassVar[int]
    expansion: ClassVar[int]

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int | None = None,
        *,
        use_short_conv: bool = True,
        conv_size: int = 4,
        qk_norm: bool = True,
        output_gate: bool = True,
        scale: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        head_dim = head_dim or hidden_size // num_heads
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.qk_norm, self.scale, self.backend = qk_norm, scale, backend
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.convs = (
            nn.ModuleList([ShortConvolution(inner, conv_size) for _ in range(3)])
            if use_short_conv
            else None
        )
        self.gate_proj = nn.ModuleDict(
            {name: nn.Linear(hidden_size, num_heads) for name in self.gate_formulas}
        )
        with torch.no_grad():  # start retention gates near their targets (any formula of z)
            grid = torch.linspace(*INIT_GRID)
            for name, target in self.gate_targets.items():
                values = self.gate_formulas[name](grid)
                self.gate_proj[name].bias.fill_(grid[(values - target).abs().argmin()].item())
        if self.layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(num_heads, head_dim))
            self.ln_bias = nn.Parameter(torch.zeros(num_heads, head_dim))
        if self.initial_kind != "zeros":  # per-head initial weights, trained through the op
            dims = [head_dim] + [self.expansion * head_dim] * (self.depth - 1) + [head_dim]
            self.initial = nn.ParameterList(
                nn.Parameter(torch.randn(num_heads, i, o) * (i**-0.5 if self.depth > 1 else 0.0))
                for i, o in pairwise(dims)
            )
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-5)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False) if output_gate else None
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def norm_args(self) -> dict:
        """The op's LayerNorm arguments (none when the memory has no LayerNorm)."""
        return {"ln_weight": self.ln_weight, "ln_bias": self.ln_bias} if self.layer_norm else {}

    def starting_memory(self, batch_size: int, like: torch.Tensor) -> tuple:
        """The memory before any write: the learned initial weights, or zeros (linear)."""
        D = self.head_dim
        return self.initial_state(batch_size) or (like.new_zeros(batch_size, self.num_heads, D, D),)

    def initial_state(self, batch_size: int):
        """The memory's starting weights for a batch (None: the op's zeros)."""
        if self.initial_kind == "zeros":
            return None
        weights = list(self.initial)
        if self.initial_kind == "simplex":  # strictly positive rows, as kl retention needs
            weights = [torch.softmax(w, dim=-1) for w in weights]
        return tuple(w.unsqueeze(0).expand(batch_size, *w.shape) for w in weights)

    def forward(self, x: torch.Tensor, state=None, use_cache: bool = False):
        """x [B, T, hidden] -> y [B, T, hidden], or (y, cache) with use_cache.

        The cache (`MemoryCache`) holds the memory state, the anchor state and offset of the
        chunk in progress, and the convolutions' last inputs: a prefill of any length followed
        by token-by-token decoding equals one pass over the whole sequence.
        """
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        cache = state if state is not None else MemoryCache()
        if T == 0:  # e.g. an empty prompt
            return (x, cache) if use_cache else x
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        conv_cache = cache.conv
        if self.convs is not None:
            (q, cq), (k, ck), (v, cv) = (
                conv(t, c) for conv, t, c in zip(self.convs, (q, k, v), conv_cache, strict=True)
            )
            conv_cache = (cq, ck, cv)
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        if self.qk_norm:
            q, k = l2norm(q), l2norm(k)
        gates = {name: self.gate_formulas[name](proj(x)) for name, proj in self.gate_proj.items()}
        memory = cache.memory if cache.memory is not None else self.initial_state(B)
        if use_cache or cache.offset:
            o, memory, anchor, offset = self.memory_segments(q, k, v, gates, memory, cache)
        else:  # training: one call, which starts a chunk
            o, memory = self.memory(q, k, v, gates, memory)
            anchor, offset = None, 0
        o = self.o_norm(o).reshape(B, T, H * D)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        y = self.o_proj(o)
        return (y, MemoryCache(memory, anchor, offset, conv_cache)) if use_cache else y

    def retrieve(self, x: torch.Tensor, memory) -> torch.Tensor:
        """M*(x): the memory at state `memory` applied to queries from x, without writing,
        through the same query and output paths (no convolution: retrieval is stateless)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        if self.qk_norm:
            q = l2norm(q)
        if memory is None:
            memory = self.starting_memory(B, x)
        o = self.read(q, memory, scale=self.scale, **self.norm_args())
        o = self.o_norm(o).reshape(B, T, -1)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o)

    def memory_segments(self, q, k, v, gates, memory, cache):
        """The op over a segment that may start inside a chunk: finish the chunk in progress
        (gradients at its anchor), run the whole chunks, then start the last, partial chunk,
        whose starting state becomes the next anchor. Returns (o, state, anchor, offset)."""
        chunk, T = self.chunk, q.shape[1]
        anchor, offset = cache.anchor, cache.offset

        def piece(start, stop, state, *continuing):
            gate_slice = {n: g[:, start:stop] for n, g in gates.items()}
            return self.memory(q[:, start:stop], k[:, start:stop], v[:, start:stop], gate_slice,
                               state, *continuing)  # fmt: skip

        pieces, start = [], 0
        if offset:
            start = min(chunk - offset, T)
            o, memory = piece(0, start, memory, anchor, offset)
            pieces.append(o)
            offset = (offset + start) % chunk
        rest = T - start
        for stop in (start + rest - rest % chunk, T):
            if stop > start:
                if stop == T and rest % chunk:  # a partial chunk begins here
                    anchor, offset = memory, rest % chunk
                o, memory = piece(start, stop, memory)
                pieces.append(o)
                start = stop
        return torch.cat(pieces, dim=1), memory, anchor, offset

    def memory(self, q, k, v, gates, initial_state, anchor_state=None, chunk_offset=0):
        """The raw op on projected inputs; returns (o, final state)."""
        return self.op(
            q,
            k,
            v,
            **gates,
            scale=self.scale,
            initial_state=initial_state,
            output_final_state=True,
            backend=self.backend,
            anchor_state=anchor_state,
            chunk_offset=chunk_offset,
            **self.norm_args(),
        )
