"""The plan stage: which torch strategies a spec gets, decided from the spec and derivation."""

from __future__ import annotations

import pytest

from mirasc.derivation.plan import make_plan
from mirasc.derivation.symbolic import derive
from mirasc.frontend.checker import load


def plan_of(arch="linear", bias="l2", retention="none", algorithm="gd(lr: eta)", chunk=1, extra=""):
    text = f"""memory p {{
    architecture = {arch}
    bias = {bias}
    retention = {retention}
    algorithm = {algorithm}
    chunk = {chunk}
    gate eta = sigmoid(z)
    {extra}
}}"""
    spec = load(text, "p.miras")
    return make_plan(spec, derive(spec))


@pytest.mark.parametrize(
    "kwargs,strategies,scale",
    [
        ({}, ("wy", "recurrent", "chunked", "chunked_autograd"), 1.0),  # DeltaNet
        ({"bias": "lp(p: 2)"}, ("wy", "recurrent", "chunked", "chunked_autograd"), 2.0),  # 2 * l2: lr scaled
        ({"retention": "decay(alpha, first: true)", "extra": "gate alpha = sigmoid(z)"},
         ("wy", "recurrent", "chunked", "chunked_autograd"), 1.0),  # Gated DeltaNet
        ({"retention": "decay(alpha)", "extra": "gate alpha = sigmoid(z)"},
         ("recurrent", "chunked", "chunked_autograd"), None),  # decay after the gradient: no WY form
        ({"bias": "huber(delta: 1)"}, ("recurrent", "chunked", "chunked_autograd"), None),
        ({"chunk": 16}, ("chunked", "chunked_autograd", "recurrent"), None),
        ({"retention": "kl(keep: a)", "extra": "gate a = sigmoid(z)"}, ("recurrent", "chunked_kl"), None),
        ({"retention": "kl(keep: a, centred: true)", "extra": "gate a = sigmoid(z)", "chunk": 8},
         ("chunked_kl", "recurrent"), None),
        ({"retention": "lq(q: 4, keep: a)", "extra": "gate a = sigmoid(z)", "chunk": 4},
         ("chunked", "chunked_autograd", "recurrent"), None),
    ],
)  # fmt: skip
def test_strategies(kwargs, strategies, scale):
    plan = plan_of(**kwargs)
    assert plan.strategies == strategies and plan.wy_scale == scale


def test_only_needed_sums_are_computed():
    assert plan_of().sums == ()  # l2: dg/dS = 1/2, no sum needed
    assert plan_of(bias="yaad(delta: 1)").sums == (0,)  # the switch needs ||r||^2 only


@pytest.mark.parametrize(
    "kwargs,chunked,why",
    [
        ({}, "wy", ""),  # the chunk-1 delta rule
        ({"chunk": 16}, "dual", ""),
        ({"chunk": 64, "bias": "huber(delta: 1)", "algorithm": "momentum(lr: eta, momentum: eta)"},
         "dual", ""),
        ({"chunk": 16, "retention": "l2(eta)"}, "dual", ""),
        ({"chunk": 8}, "", "chunk 8: the chunked Triton kernels' tiles take chunks of 16, 32, 64, 128"),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)"}, "mlp", ""),
        ({"chunk": 16, "arch": "mlp(depth: 3, expansion: 2)"}, "deep", ""),
        ({"chunk": 32, "arch": "mlp(depth: 4, expansion: 1)", "retention": "decay(eta, first: true)"},
         "deep", ""),
        ({"chunk": 16, "arch": "mlp(depth: 3, expansion: 2)", "retention": "lq(q: 4, keep: eta)"},
         "deep", ""),
        ({"chunk": 16, "arch": "mlp(depth: 3, expansion: 2)", "retention": "kl(keep: eta)"},
         "deep", ""),
        ({"chunk": 16, "arch": "mlp(depth: 3, expansion: 2)", "extra": "clip = 1.0"}, "deep", ""),
        ({"chunk": 8, "arch": "mlp(depth: 3, expansion: 2)"}, "", "chunk 8"),
        ({"chunk": 16, "arch": "linear(residual: true, norm: layernorm)"}, "dual", ""),
        ({"chunk": 16, "retention": "decay(eta, first: true)"}, "dual", ""),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)", "retention": "decay(eta, first: true)"},
         "mlp", ""),
        ({"chunk": 16, "extra": "clip = 1.0"}, "dual", ""),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)", "extra": "clip = 1.0"}, "mlp", ""),
        ({"chunk": 16, "retention": "kl(keep: eta)"}, "kl", ""),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)", "retention": "kl(keep: eta)"},
         "kl", ""),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)", "retention": "kl(keep: eta)",
          "extra": "clip = 1.0"}, "kl", ""),
        ({"chunk": 16, "arch": "mlp(depth: 2, expansion: 2)", "retention": "lq(q: 4, keep: eta)"},
         "mlp", ""),
        ({"chunk": 16, "retention": "lq(q: 4, keep: eta)"}, "dual", ""),
    ],
)  # fmt: skip
def test_which_chunked_triton_kernels(kwargs, chunked, why):
    """The plan names the chunked Triton kernels long calls take, and why training-length
    calls take none (if so)."""
    plan = plan_of(**kwargs)
    assert plan.triton_chunked == chunked
    assert (why in plan.triton_chunked_why) if why else plan.triton_chunked_why == ""
