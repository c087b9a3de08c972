"""Invariants of the update semantics, each a property test on the torch backend (float64)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mirasc import testing
from mirasc.testing import relative_error

TOL = 1e-9  # fp64 against fp64: same maths, another order (see test_backend)


def spec_text(arch="mlp(depth: 2, expansion: 2, activation: gelu, residual: true)", bias="l2",
              retention="decay(alpha)", algorithm="gd(lr: eta)", chunk=3, gates=None):  # fmt: skip
    gates = gates or ["gate eta = sigmoid(z)", "gate alpha = sigmoid(z)"]
    lines = [f"architecture = {arch}", f"bias = {bias}", f"retention = {retention}",
             f"algorithm = {algorithm}", f"chunk = {chunk}", *gates]  # fmt: skip
    return "memory inv {\n    " + "\n    ".join(lines) + "\n}\n"


def call(module, case, gates=None):
    """The torch backend on a case, with some gates replaced."""
    return testing.call(
        module, replace(case, gates={**case.gates, **(gates or {})}), backend="torch"
    )


@pytest.mark.parametrize("name", ["titans", "moneta", "memora", "gated_deltanet", "yaad"])
@settings(max_examples=4)
@given(chunks=st.integers(1, 3), tail=st.integers(1, 5), seed=st.integers(0, 999))
def test_two_calls_equal_one(shipped, name, chunks, tail, seed):
    """Splitting at a chunk boundary and passing the state along changes nothing."""
    module = shipped[name]
    spec = testing.spec_of(module)
    split = chunks * spec.chunk
    case = testing.make_case(
        spec, B=1, T=split + tail, H=2, Dk=4, seed=seed, with_initial_state=True
    )
    o, state = call(module, case)
    o1, mid = call(module, testing.slice_case(case, 0, split, case.initial_state))
    o2, end = call(module, testing.slice_case(case, split, case.q.shape[1], mid))
    assert relative_error(torch.cat([o1, o2], 1), o) < TOL
    assert all(relative_error(a, b) < TOL for a, b in zip(end, state, strict=True))


def _same(compile_text, text_a, text_b, seed, gates_b=None, scale_lr=None, **shape):
    a, b = compile_text(text_a), compile_text(text_b)
    case = testing.make_case(testing.spec_of(a), seed=seed, with_initial_state=True, **shape)
    gates_b = dict(case.gates, **(gates_b or {}))
    if scale_lr:
        gates_b["eta"] = case.gates["eta"] * scale_lr
    oa, sa = call(a, case)
    ob, sb = call(b, case, gates=gates_b)
    assert relative_error(ob, oa) < TOL
    assert all(relative_error(x, y) < TOL for x, y in zip(sb, sa, strict=True))


@settings(max_examples=5)
@given(seed=st.integers(0, 999))
def test_lp2_is_twice_l2(compile_text, seed):
    """lp(p: 2) = sum r^2 = 2 * l2, so lp with lr eta equals l2 with lr 2 eta."""
    _same(compile_text, spec_text(bias="l2"), spec_text(bias="lp(p: 2)"), seed, scale_lr=0.5,
          B=2, T=7, H=1, Dk=3)  # fmt: skip


@settings(max_examples=5)
@given(seed=st.integers(0, 999))
def test_huber_with_huge_delta_is_l2(compile_text, seed):
    _same(compile_text, spec_text(bias="l2"), spec_text(bias="huber(delta: 1e6)"), seed,
          B=2, T=7, H=1, Dk=3)  # fmt: skip


@settings(max_examples=5)
@given(seed=st.integers(0, 999))
def test_momentum_with_zero_beta_is_gd(compile_text, seed):
    gd = spec_text()
    mom = spec_text(algorithm="momentum(lr: eta, momentum: beta)",
                    gates=["gate eta = sigmoid(z)", "gate alpha = sigmoid(z)", "gate beta = sigmoid(z)"])  # fmt: skip
    a, b = compile_text(gd), compile_text(mom)
    case = testing.make_case(
        testing.spec_of(a), B=2, T=8, H=1, Dk=3, seed=seed, with_initial_state=True
    )
    oa, _ = call(a, case)
    beta = torch.zeros_like(case.gates["eta"])
    ob, _ = call(b, case, gates={"beta": beta})
    assert relative_error(ob, oa) < TOL


@settings(max_examples=5)
@given(seed=st.integers(0, 999))
def test_decay_with_zero_alpha_is_none(compile_text, seed):
    a = compile_text(spec_text(retention="none", gates=["gate eta = sigmoid(z)"]))
    b = compile_text(spec_text())
    case = testing.make_case(
        testing.spec_of(a), B=2, T=8, H=1, Dk=3, seed=seed, with_initial_state=True
    )
    oa, _ = call(a, case)
    ob, _ = call(b, case, gates={"alpha": torch.zeros_like(case.gates["eta"])})
    assert relative_error(ob, oa) < TOL


@settings(max_examples=5)
@given(seed=st.integers(0, 999))
def test_chunk_one_chunked_equals_recurrent(compile_text, seed):
    module = compile_text(spec_text(chunk=1, algorithm="momentum(lr: eta, momentum: beta)",
                                    gates=["gate eta = sigmoid(z)", "gate alpha = sigmoid(z)",
                                           "gate beta = sigmoid(z)"]))  # fmt: skip
    case = testing.make_case(testing.spec_of(module), B=2, T=9, H=2, Dk=3, seed=seed)
    oc, _sc, gc = testing.run(module, case, "torch", "chunked")
    orr, _sr, gr = testing.run(module, case, "torch", "recurrent")
    assert relative_error(oc, orr) < TOL
    assert all(relative_error(gc[n], gr[n]) < TOL for n in gr)


def test_gated_deltanet_is_the_gdn_recurrence(shipped):
    """S_t = a_t S_{t-1} (I - b_t k k^T) + b_t v k^T, o_t = S_t^T q (key-major state)."""
    module = shipped["gated_deltanet"]
    case = testing.make_case(
        testing.spec_of(module), B=2, T=13, H=3, Dk=5, Dv=4, seed=7, with_initial_state=False
    )
    o, (state,) = call(module, case)
    beta, keep = case.gates["beta"], 1 - case.gates["alpha"]
    S = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    outs = []
    for t in range(13):
        k, v, q = case.k[:, t], case.v[:, t], case.q[:, t] * case.scale
        b, a = beta[:, t, :, None, None], keep[:, t, :, None, None]
        S = a * S
        S = S + b * k[..., :, None] * (v - (S * k[..., :, None]).sum(-2))[..., None, :]
        outs.append((S * q[..., :, None]).sum(-2))
    assert relative_error(o, torch.stack(outs, 1)) < TOL
    assert relative_error(state, S) < TOL


def test_odd_sizes(shipped):
    """T = 63 and D = 60: ragged chunks and sizes that are no power of two."""
    for name in ("titans", "gated_deltanet"):
        module = shipped[name]
        spec = testing.spec_of(module)
        case = testing.make_case(spec, B=1, T=63, H=1, Dk=60, seed=1)
        errors = testing.compare(module, case, "torch")
        assert max(errors.values()) < TOL, (name, errors)
