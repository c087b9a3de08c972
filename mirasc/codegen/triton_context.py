"""What the Triton template reads beyond the package context: the printed helper bodies, the
memory's layers as on-chip tiles, the gate rows the kernels load, and the lists of kernel
variable names that tie the kernel's pieces together (one name per layer)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from ..derivation.plan import Plan
from ..derivation.symbolic import Derived, symbol
from ..ir.spec import Spec, bias_gate_names
from .package_context import gate_operand
from .printing import TritonPrinter
from .safety import Code, located, spec_hash
from .triton_pieces import ROW_SUM, activation_bodies, bias_bodies

# each dimension's index range and mask names inside the kernels
TILES = {"DK": ("rk", "mk"), "HID": ("rh", "mh"), "DV": ("rv", "mv")}


@dataclass(frozen=True)
class LayerTiles:
    """Layer `index` (1-based) of the memory as a [in, out] weight tile."""

    index: int
    out_dim: str  # DK, HID or DV
    in_range: str
    in_mask: str
    out_range: str
    out_mask: str
    offset: Code  # where its weights start in the flat state


@dataclass(frozen=True)
class KernelNames:
    """Comma-separated kernel variable names, one per layer: state tiles and their adjoints.
    Kernels name on-chip blocks `b_`, their adjoints `b_d`, program indices `i_`, weight-tile
    offsets `o_w`, index grids `i_w`, masks `m_`, and raw pointer arguments `*_ptr`."""

    state: Code  # b_w1.., then b_s1.. (momentum): what an update returns
    anchor: Code  # b_p1..: the chunk's anchor weights the surprise is taken at
    read: Code  # b_r1..: the weights a token reads
    grads: Code  # b_g1..: the token's gradients
    grad_adjoints: Code  # b_dg1..
    anchor_adjoints: Code  # b_dp1..
    read_adjoints: Code  # b_dr1..
    weight_adjoints: Code  # b_dw1..
    momentum_adjoints: Code  # b_ds1..
    previous_weights: Code  # b_wp1..: the state before a token
    previous_momentum: Code  # b_sp1..
    next_weights: Code  # b_wn1..: (kl) the mirror step's result
    surprise_outputs: Code  # what _surprise returns for the backward pass
    read_outputs: Code  # what _read returns for the backward pass
    read_outputs_saved: Code  # the same names, prefixed r_, where the backward recomputes them


@dataclass(frozen=True)
class TritonContext:
    layers: list  # LayerTiles
    weight_size: Code
    state_size: Code
    state_formula: Code  # |state| for the docstring
    segment: int
    namespace: str  # the torch.library namespace (spec name and hash)
    helpers: set  # runtime.triton_lib helpers the printed code calls
    loss_params: list  # _p0..: the loss's gate parameters inside kernels
    has_retention_gate: bool
    retention_row: int | None
    momentum_row: int | None
    param_rows: list
    gate_rows: Code  # the gates the kernels load, in row order
    masks: Code
    kl_masks: Code
    kl_mask_params: Code
    update_args: Code
    names: KernelNames
    loss_grad_lines: list
    loss_vjp_lines: list
    act_lines: list
    act_d1_lines: list
    act_d2_lines: list
    lq: dict  # lq retention's printed powers (pow_q, pow_grad, exponent), else empty
    wy: bool  # the plan's "wy" strategy: training-length calls take the chunked WY kernels
    wy_scale: Code  # c in dl/dy = c (y - v), for those kernels
    dual: bool  # the plan's chunked dual-form kernels for training-length calls
    mlp: bool  # the plan's chunked dual-form kernels of a two-layer MLP memory
    deep: bool  # the plan's chunked dual-form kernels of an MLP of three or more layers
    deep_scratch: list  # (buffer, its offset in a program's scratch) for those kernels
    deep_scratch_size: Code  # a program's scratch, in floats
    kl_chunk: bool  # the plan's chunked forward kernel of a two-layer MLP under kl retention
    coordinatewise: bool  # each value column on its own: no loss sum, LayerNorm, clip or lq
    value_tiles: bool  # the recurrent kernels' programs each take a tile of value columns
    n_gate_rows: int  # rows of the gate tensor the kernels load
    loss_grad_rows_lines: list  # the loss pieces for a chunk's tiles, for those kernels
    loss_vjp_rows_lines: list


def _names(prefix: str, indices) -> Code:
    return Code(", ".join(f"{prefix}{i}" for i in indices))


def _layers(depth: int) -> tuple[list, list]:
    """The layers' tiles and each layer's size as code."""
    dims = ["DK"] + ["HID"] * (depth - 1) + ["DV"]
    layers, sizes = [], []
    for index, (i, o) in enumerate(itertools.pairwise(dims), start=1):
        ri, mi = TILES[i]
        ro, mo = TILES[o]
        layers.append(LayerTiles(index, o, ri, mi, ro, mo, Code(" + ".join(sizes) or "0")))
        sizes.append(f"{i} * {o}")
    return layers, sizes


def _gate_rows(spec: Spec) -> tuple[list, dict]:
    """The gate operands in the kernels' row order (learning rate, retention gate, momentum,
    loss parameters) and the row of each role."""
    ret = spec.retention
    code, rows = [gate_operand(spec.algorithm.lr, "lr")], {}
    if ret.gate is not None:
        rows["retention"] = len(code)
        code.append(gate_operand(ret.gate, ret.kind))
    if spec.has_momentum:
        rows["momentum"] = len(code)
        code.append(gate_operand(spec.algorithm.momentum, "momentum"))
    rows["params"] = []
    for name in bias_gate_names(spec.bias):
        rows["params"].append(len(code))
        code.append(Code(f'runtime.gate(gates["{name}"], "{name}", q)'))
    return code, rows


def _kernel_names(spec: Spec) -> KernelNames:
    L, ls = spec.depth, range(1, spec.depth + 1)
    sur = [f"a{i}" for i in range(L)] + [f"zr{i}" for i in ls] + [f"u{i}" for i in range(1, L)]
    sur += [f"d{i}" for i in ls] + [f"dd{i}" for i in ls] + ["y", "dy"]
    read = ["o"] + [f"h{i}" for i in range(L)] + [f"r{i}" for i in ls]
    if spec.architecture.norm == "layernorm":
        sur += ["xh", "rstd"]
        read += ["xh", "rstd"]
    if spec.clip is not None:
        sur += ["fac", "dfac"]
    state = [f"b_w{i}" for i in ls] + ([f"b_s{i}" for i in ls] if spec.has_momentum else [])
    return KernelNames(
        state=Code(", ".join(state)),
        anchor=_names("b_p", ls),
        read=_names("b_r", ls),
        grads=_names("b_g", ls),
        grad_adjoints=_names("b_dg", ls),
        anchor_adjoints=_names("b_dp", ls),
        read_adjoints=_names("b_dr", ls),
        weight_adjoints=_names("b_dw", ls),
        momentum_adjoints=_names("b_ds", ls),
        previous_weights=_names("b_wp", ls),
        previous_momentum=_names("b_sp", ls),
        next_weights=_names("b_wn", ls),
        surprise_outputs=Code(", ".join(sur)),
        read_outputs=Code(", ".join(read)),
        read_outputs_saved=Code(", ".join("r_" + n for n in read)),
    )


def _deep_scratch(spec: Spec) -> tuple[list, Code]:
    """The scratch buffers of the deep MLP kernels (templates/triton/deep_chunk.py.j2), each
    [BT, width], as (name, offset) and the total, in the kernels' constants: per layer l its
    inputs and pre-activations for the surprise (a, z, and u before rho with `first`), the
    deltas (r) and the deltas' chain (bk), the reads' (hq, zq) and token-pair matrices (m, md),
    and the backward pass's adjoints (ab, db, yb, hb, sz), with clip the clipped deltas (c);
    then shared work buffers (and clip's per-token factors). Under kl the reads' token-pair
    matrices give way to each token's log-sum-exps per row of the layer's state (lse)."""
    L, first, kl = spec.depth, spec.retention.first, spec.retention.kind == "kl"
    ins, outs = ["DK"] + ["HID"] * (L - 1), ["HID"] * (L - 1) + ["DV"]
    buffers = []
    for li, (i, o) in enumerate(zip(ins, outs, strict=True)):
        names = [("a", i), ("z", o), ("r", o), ("hq", i), ("zq", o)]
        names += [("lse", i)] if kl else [("m", "BT"), ("md", "BT")]
        names += [("ab", i), ("db", o), ("yb", o), ("hb", i), ("sz", o)]
        names += [("u", o)] if first else []
        names += [("c", o)] if spec.clip is not None else []
        names += [("bk", o)] if li < L - 1 else []
        buffers += [(f"{n}{li}", w) for n, w in names]
    wide = ["DK", "HID", "DV"]  # a work buffer takes any layer's rows
    if kl:  # each token's row sums of its state against the read's adjoint, the end state's
        buffers += [("eb", wide), ("rd", wide), ("ev", wide)]
    else:
        buffers += [("tmp", wide), ("xw", wide), ("eb", wide), ("gm", "BT"), ("gmd", "BT")]
    buffers += [("fac", "1"), ("rsv", "1")] if spec.clip is not None else []  # clip's rows
    buffers += [("dxe", "DK")] if spec.retention.kind == "lq" else []  # the end read's dx

    def widths(counts: dict) -> str:
        return " + ".join(f"{c} * {w}" for w, c in counts.items() if c) or "0"

    counts = dict.fromkeys(["DK", "HID", "DV", "BT", "1"], 0)
    offsets = []
    for name, width in buffers:
        offsets.append((name, Code(f"BT * ({widths(counts)})")))
        for w in width if isinstance(width, list) else [width]:
            counts[w] += 1
    return offsets, Code(f"BT * ({widths(counts)})")


def _lq_pieces(spec: Spec) -> tuple[dict, set]:
    """|x|^q, |x|^(q-2) x and (q - 2) / q printed for lq retention's normaliser."""
    if spec.retention.kind != "lq":
        return {}, set()
    q = float(spec.retention.q)
    printer, x = TritonPrinter(), symbol("x")
    qs = sp.Integer(int(q)) if q.is_integer() else sp.Float(q)
    pieces = dict(
        pow_q=Code(printer.doprint(sp.Abs(x) ** qs)),
        pow_grad=Code(printer.doprint(sp.Abs(x) ** (qs - 2) * x)),
        exponent=Code(repr((q - 2.0) / q)),
    )
    return pieces, printer.helpers


def _state_formula(sizes: list, spec: Spec) -> Code:
    hidden = f"{spec.architecture.expansion}*Dk"
    text = " + ".join(
        s.replace("DK", "Dk").replace("DV", "Dv").replace("HID", hidden) for s in sizes
    )
    return Code(text + (", twice with momentum" if spec.has_momentum else ""))


def triton_context(spec: Spec, derived: Derived, plan: Plan, source_text: str) -> TritonContext:
    layers, sizes = _layers(spec.depth)
    weight_size = Code("(" + " + ".join(sizes) + ")")
    with located(spec.bias.body.span):
        loss = bias_bodies(derived, plan)
        tiles = bias_bodies(derived, plan, ROW_SUM)
    activation = spec.architecture.activation
    with located(activation.body.span if activation is not None else None):
        act = activation_bodies(derived)
    lq, lq_helpers = _lq_pieces(spec)
    row_code, rows = _gate_rows(spec)
    deep_scratch, deep_scratch_size = _deep_scratch(spec)
    return TritonContext(
        layers=layers,
        weight_size=weight_size,
        state_size=Code(f"2 * {weight_size}" if spec.has_momentum else weight_size),
        state_formula=_state_formula(sizes, spec),
        segment=plan.segment,
        namespace=f"mirasc_{spec.module_name}_{spec_hash(source_text)[:12]}",
        helpers=set(loss.helpers) | set(act.helpers) | lq_helpers,
        loss_params=[f"_p{i}" for i in range(loss.n_params)],
        has_retention_gate=spec.retention.gate is not None,
        retention_row=rows.get("retention"),
        momentum_row=rows.get("momentum"),
        param_rows=rows["params"],
        gate_rows=Code(", ".join(row_code)),
        masks=Code("mk, mh, mv" if spec.depth > 1 else "mk, mv"),
        kl_masks=Code(", ".join(f"m_w{ly.index}, {ly.in_mask}" for ly in layers)),
        kl_mask_params=Code(", ".join(f"m_w{ly.index}, mi{ly.index}" for ly in layers)),
        update_args=Code(", ".join(_update_args(spec))),
        names=_kernel_names(spec),
        loss_grad_lines=[Code(line) for line in loss.grad_lines],
        loss_vjp_lines=[Code(line) for line in loss.vjp_lines],
        act_lines=[Code(line) for line in act.act_lines],
        act_d1_lines=[Code(line) for line in act.d1_lines],
        act_d2_lines=[Code(line) for line in act.d2_lines],
        lq=lq,
        wy="wy" in plan.strategies,
        wy_scale=Code(repr(plan.wy_scale or 0.0)),
        dual=plan.triton_chunked == "dual",
        mlp=plan.triton_chunked == "mlp",
        deep=plan.triton_chunked == "deep",
        deep_scratch=deep_scratch,
        deep_scratch_size=deep_scratch_size,
        kl_chunk=plan.triton_chunked == "kl",
        coordinatewise=plan.coordinatewise,
        value_tiles=plan.recurrent_value_tiles,
        n_gate_rows=len(row_code),
        loss_grad_rows_lines=[Code(line) for line in tiles.grad_lines],
        loss_vjp_rows_lines=[Code(line) for line in tiles.vjp_lines],
    )


def _update_args(spec: Spec) -> list:
    args = ["e"] + (["rate"] if spec.retention.gate is not None else [])
    args += ["mom"] if spec.has_momentum else []
    return args
