"""The recurrent Triton kernels' value tiles: where the plan finds each value column of a linear
memory updating on its own (`plan.recurrent_value_tiles`), each program takes a tile of value
columns, so a program holds a [Dk, tile] slice of the state instead of all of it, and the grid
grows by Dv / tile for decoding. Each program adds its share of dq, dk and the gates' adjoints,
which the host sums. Held against the float64 reference in Triton's interpreter with the tile
narrowed to 8 columns and Dv = 20: three programs per (batch, head), the last one partly masked.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_backend import TOL32, TOL_CASE32, assert_close
from test_dual_chunk import linear_spec

from mirasc import testing
from mirasc.derivation.plan import make_plan
from mirasc.derivation.symbolic import derive
from mirasc.frontend.checker import load
from mirasc.runtime.triton_host import FusedRecurrent

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def value_tiles_of(columns: int):
    """The recurrent kernels' value tiles narrowed, so that small test shapes cross several."""
    wide, FusedRecurrent.VALUE_TILE = FusedRecurrent.VALUE_TILE, columns
    try:
        yield
    finally:
        FusedRecurrent.VALUE_TILE = wide


@pytest.fixture
def narrow_tiles():
    with value_tiles_of(8):
        yield


def value_tiles(text: str) -> bool:
    spec = load(text.encode(), "<test>")
    return make_plan(spec, derive(spec)).recurrent_value_tiles


@pytest.mark.parametrize(
    ("name", "split"),
    [("deltanet", True), ("gated_deltanet", True), ("linear_attention", True),
     ("titans", False), ("ttt_mlp", False), ("yaad", False), ("moneta", False),
     ("memora", False)],
)  # fmt: skip
def test_the_plan_splits_the_shipped_linear_memories(shipped, name, split):
    assert shipped[name].triton_backend.fused.value_tiles is split


@pytest.mark.parametrize(
    ("text", "split"),
    [
        (linear_spec("huber(delta: d)", "l2(alpha)", 3), True),
        (linear_spec("lp(p: 3)", "decay(alpha)", 4, "momentum(lr: eta, momentum: beta)"), True),
        (linear_spec("yaad(delta: d)", "none", 1), False),  # the residual's norm spans the columns
        (linear_spec("l2", "lq(q: 3, keep: alpha)", 2), False),  # so does the normaliser
        (linear_spec("l2", "none", 1, clip=1.0), False),  # and the gradient's norm
        (linear_spec("l2", "none", 1, arch="linear(norm: layernorm)"), False),
        (linear_spec("l2", "none", 1, arch="linear(residual: true)"), False),  # needs k's columns
    ],
)  # fmt: skip
def test_the_plan_splits_only_coordinatewise_linear_memories(text, split):
    assert value_tiles(text) is split


CASES = {
    "deltanet": None,
    "gated_deltanet": None,
    "huber_l2_chunk3": linear_spec("huber(delta: d)", "l2(alpha)", 3),
    "first_dot_chunk2": linear_spec("dot", "decay(alpha, first: true)", 2),
    "lp_decay_momentum_chunk4": linear_spec(
        "lp(p: 3)", "decay(alpha)", 4, "momentum(lr: eta, momentum: beta)"
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_value_tiles_match_reference(shipped, compile_text, narrow_tiles, name):
    """Outputs, final states and every gradient (q, k, v, each gate, the loss's gate, the
    initial state) over three value tiles; T = 21 crosses chunks and the saved segments."""
    module = shipped[name] if CASES[name] is None else compile_text(CASES[name])
    assert module.triton_backend.fused.value_programs(20) == 3
    case = testing.make_case(testing.spec_of(module), B=2, T=21, H=2, Dk=12, Dv=20, seed=1,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_close(testing.compare(module, case.to(DEVICE), "triton"), TOL_CASE32, name)


def test_a_call_continuing_a_chunk_over_value_tiles(compile_text, narrow_tiles):
    """Prefill, then the rest of the chunk, then a call continuing it from its anchor: equal to
    one call (the anchor's columns are each program's own)."""
    module = compile_text(CASES["lp_decay_momentum_chunk4"])
    case = testing.make_case(testing.spec_of(module), B=1, T=13, H=2, Dk=12, Dv=20, seed=2,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert testing.continuation_error(module, case.to(DEVICE), 6, backend="triton") < TOL_CASE32


@settings(max_examples=3, deadline=None)  # the first is the minimal draw; ~30 s each
@given(
    bias=st.sampled_from(["l2", "huber(delta: d)", "lp(p: 3)", "dot",
                          "bias(y, v) = sum(log(cosh(y - v)))"]),
    retention=st.sampled_from(["none", "decay(alpha)", "l2(alpha)", "decay(alpha, first: true)"]),
    momentum=st.booleans(),
    chunk=st.sampled_from([1, 2, 3, 5]),
    Dv=st.integers(9, 26),
    T=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_drawn_coordinatewise_memories_over_value_tiles(compile_text, bias, retention, momentum,
                                                        chunk, Dv, T, seed):  # fmt: skip
    """Drawn losses, retentions, algorithms and chunks over two to four value tiles of 8."""
    momentum &= retention in ("none", "decay(alpha)")  # what the checker allows with momentum
    algorithm = "momentum(lr: eta, momentum: beta)" if momentum else "gd(lr: eta)"
    module = compile_text(linear_spec(bias, retention, chunk, algorithm))
    assert module.triton_backend.fused.value_tiles
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=2, Dk=12, Dv=Dv, seed=seed,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with value_tiles_of(8):
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert_close(errors, TOL32, f"{bias} {retention} {algorithm} chunk {chunk} Dv={Dv} T={T}")
