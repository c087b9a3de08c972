"""Derived to Plan: which strategies each backend gets for a spec, decided once from the spec
and its derivation (docs/semantics.md §3), so templates only print what the plan says."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from ..ir.spec import Spec
from .symbolic import Derived, V, Y

SEGMENT_TOKENS = 16
DUAL_CHUNK_SIZES = (16, 32, 64, 128)  # tl.dot's tiles: at least 16 rows, a power of two


@dataclass(frozen=True)
class Plan:
    strategies: tuple  # the torch backend's strategies, the default first
    wy_scale: float | None  # c when dl/dy = c (y - v) and the WY form applies
    sums: tuple  # indices of the loss's sums S_i that dl/dy needs
    segment: int  # Triton: tokens between the states the forward pass saves (chunk multiple)
    # Triton's chunked kernels for training-length calls: "wy", "dual" (a linear memory),
    # "mlp" (a two-layer MLP memory), "deep" (an MLP of three or more layers, kl retention
    # included), "kl" (a linear or two-layer MLP memory under kl) or ""
    triton_chunked: str
    triton_chunked_why: str  # why training-length calls take no chunked Triton kernels, or ""
    coordinatewise: bool  # each value column updates on its own (see `coordinatewise`)
    recurrent_value_tiles: bool  # the recurrent kernels split the value columns across programs


def wy_scale(spec: Spec, derived: Derived) -> float | None:
    """c when the spec is the chunk-1 delta rule with dl/dy = c (y - v): linear memory, gd,
    no or first-order decay retention, nothing else; None otherwise."""
    a, ret = spec.architecture, spec.retention
    if not (
        spec.chunk == 1
        and a.depth == 1
        and not a.residual
        and a.norm is None
        and spec.clip is None
        and spec.algorithm.kind == "gd"
        and (ret.kind == "none" or (ret.kind == "decay" and ret.first))
        and not derived.bias.params
    ):
        return None
    grad = derived.bias.grad()
    c = sp.diff(grad, Y)  # cheap structural test, no simplify() on user formulas
    if not (c.is_number and c.is_positive) or sp.expand(grad - c * (Y - V)) != 0:
        return None
    return float(c)


def dual_chunk_refusal(spec: Spec) -> str:
    """Why the chunked Triton kernels (every gradient at the chunk's anchor; the dual form of a
    linear memory or an MLP of any depth, or the row softmaxes of kl retention) do not take
    the spec; "" if they do. What they lack runs on the recurrent
    kernels."""
    if spec.chunk not in DUAL_CHUNK_SIZES:
        sizes = ", ".join(map(str, DUAL_CHUNK_SIZES))
        return f"chunk {spec.chunk}: the chunked Triton kernels' tiles take chunks of {sizes}"
    return ""


def coordinatewise(spec: Spec, sums: tuple) -> bool:
    """Each value column of the state updates on its own: dl/dy_j needs no sum over the
    columns, and no LayerNorm, clip or lq normaliser couples them. The sequential kernels may
    then give each program a tile of value columns."""
    return not (
        sums or spec.architecture.norm or spec.clip is not None or spec.retention.kind == "lq"
    )


def recurrent_value_tiles(spec: Spec, sums: tuple) -> bool:
    """The recurrent kernels give each program a tile of value columns: a coordinate-wise
    linear memory whose read adds no residual (which would need the key's columns) under a
    retention other than kl (whose row softmax spans the columns)."""
    return (
        coordinatewise(spec, sums)
        and spec.depth == 1
        and not spec.architecture.residual
        and spec.retention.kind != "kl"
    )


def make_plan(spec: Spec, derived: Derived) -> Plan:
    """The WY form for the chunk-1 delta rule; the chunked dual form where every state is
    linear in the chunk's gradients, the default from chunk 2 on (at chunk 1 it is a slower
    recurrent loop), with its explicit backward pass ("chunked") and differentiated by autograd
    ("chunked_autograd", kept for comparison); the recurrent path always. kl retention, not
    linear in the gradients, has its own chunked form in the log domain ("chunked_kl"), the
    default from chunk 2 on."""
    c = wy_scale(spec, derived)
    if c is not None:
        strategies = ("wy", "recurrent", "chunked", "chunked_autograd")
    elif spec.retention.kind == "kl":  # exact in the log domain, a chunk at a time
        strategies = ("chunked_kl", "recurrent") if spec.chunk > 1 else ("recurrent", "chunked_kl")
    elif spec.chunk > 1:
        strategies = ("chunked", "chunked_autograd", "recurrent")
    else:
        strategies = ("recurrent", "chunked", "chunked_autograd")
    b = derived.bias
    # only the sums some dg/dS_i depends on are computed (l2's dg is constant: no sum at all)
    used = set().union(*(g.free_symbols for g in b.dg)) & set(b.sums)
    sums = tuple(i for i, S in enumerate(b.sums) if S in used)
    # the backward pass recomputes a segment's states from its saved start: at least 16
    # tokens per saved state bounds the activation memory at ~T/16 states for chunk 1
    segment = spec.chunk * math.ceil(SEGMENT_TOKENS / spec.chunk)
    why = "" if c is not None else dual_chunk_refusal(spec)
    if c is not None or why:
        chunked = "wy" if c is not None else ""
    elif spec.depth > 2:
        chunked = "deep"
    elif spec.retention.kind == "kl":
        chunked = "kl"
    elif spec.depth == 1:
        chunked = "dual"
    else:
        chunked = "mlp"
    return Plan(
        strategies, c, sums, segment, chunked, why,
        coordinatewise(spec, sums), recurrent_value_tiles(spec, sums),
    )  # fmt: skip
