"""Prefill of any length, then token-by-token decoding, equals the parallel pass (fp64), for
every shipped spec and for chunk sizes that put the prefill boundary anywhere in a chunk."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mirasc.errors import BackendError
from mirasc.testing import relative_error

TOL = 1e-9  # same maths in another order, fp64 (see test_backend)
NAMES = [
    "linear_attention",
    "deltanet",
    "gated_deltanet",
    "titans",
    "yaad",
    "moneta",
    "memora",
    "ttt_mlp",
]


def decode_matches(layer, T: int, prefill: int, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    full = layer(x)
    y, cache = layer(x[:, :prefill], use_cache=True)
    outs = [y]
    for t in range(prefill, T):
        y, cache = layer(x[:, t : t + 1], state=cache, use_cache=True)
        outs.append(y)
    assert relative_error(torch.cat(outs, 1), full) < TOL


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=3)
@given(prefill=st.integers(0, 20), seed=st.integers(0, 99))
def test_shipped_layers_decode_exactly(shipped, name, prefill, seed):
    torch.manual_seed(seed)
    layer = shipped[name].Layer(16, 2).double()
    decode_matches(layer, 21, prefill, seed)


SPEC = """memory decode_{retention} {{
    architecture = mlp(depth: 2, expansion: 2, activation: silu, residual: true, norm: layernorm)
    bias = huber(delta: 0.5)
    retention = {ret}
    algorithm = {alg}
    chunk = {chunk}
    gate eta = 0.1 * sigmoid(z)
    {gates}
}}
"""
VARIANTS = {
    "decay": (
        "decay(alpha)",
        "momentum(lr: eta, momentum: beta)",
        "gate alpha = sigmoid(z)\n    gate beta = sigmoid(z)",
    ),
    "lq": ("lq(q: 3, keep: a)", "gd(lr: eta)", "gate a = sigmoid(z)"),
    "first": ("decay(alpha, first: true)", "gd(lr: eta)", "gate alpha = sigmoid(z)"),
}


@pytest.mark.parametrize("retention", sorted(VARIANTS))
@settings(max_examples=4)
@given(chunk=st.integers(2, 5), prefill=st.integers(0, 12), seed=st.integers(0, 99))
def test_any_chunk_size_decodes_exactly(compile_text, retention, chunk, prefill, seed):
    ret, alg, gates = VARIANTS[retention]
    module = compile_text(
        SPEC.format(retention=retention, ret=ret, alg=alg, chunk=chunk, gates=gates)
    )
    torch.manual_seed(seed)
    layer = module.Layer(16, 2).double()
    decode_matches(layer, 13, prefill, seed)


def test_op_continues_a_chunk_against_the_reference(shipped):
    """The op's anchor_state/chunk_offset, on the torch backend and the oracle."""
    from mirasc import testing

    module = shipped["moneta"]
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=1, T=20, H=1, Dk=3, seed=4)
    anchor = tuple(torch.randn_like(s) for s in case.initial_state)
    runs = {
        b: testing.call(module, case, anchor_state=anchor, chunk_offset=5, backend=b)
        for b in ("torch", "reference")
    }
    assert relative_error(runs["torch"][0], runs["reference"][0]) < TOL


@pytest.mark.parametrize("name,split", [("titans", 5), ("titans", 16), ("moneta", 21), ("yaad", 9)])
def test_split_calls_continue_a_chunk(shipped, name, split):
    """mirasc.testing.continuation_error: prefix, rest of the chunk, continuation = one call."""
    from mirasc import testing

    module = shipped[name]
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=2, Dk=3, seed=2)
    assert testing.continuation_error(module, case, split) < TOL


def test_continuing_a_chunk_without_its_anchor_names_the_missing_argument(compile_text):
    """A memory with no default starting state cannot guess where a continued chunk began."""
    module = compile_text(
        """memory simplex_chunks {
    architecture = linear
    bias = l2
    retention = kl(keep: a)
    algorithm = gd(lr: eta)
    chunk = 4
    gate eta = 0.1 * sigmoid(z)
    gate a = sigmoid(z)
}
"""
    )
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    start = (torch.full((1, 2, 4, 4), 0.25, dtype=torch.float64),)
    with pytest.raises(BackendError, match="pass anchor_state"):
        module.op(q, q, q, eta=0.0, a=1.0, initial_state=start, chunk_offset=2, backend="torch")
