"""The chunked dual-form kernels of two-layer MLP memories (mirasc.runtime.mlp_chunk, printed
per spec with its loss and activation) that the Triton backend runs for training-length calls,
against the float64 autograd reference: outputs, final states and the gradients of q, k, v,
every gate (the loss's parameters included), the initial state and LayerNorm's gain and bias.
Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1).
Gradient cases lower the kernels' 64-token threshold (a dispatch choice, not semantics) to
keep the interpreter's time short; head sizes of 20 give a hidden size of 80 at expansion 4,
so hidden tiles of 32 or 64 with the last one partly masked.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_backend import TOL_CASE32, assert_close
from test_triton_backend import assert_as_accurate_as_fp32_torch
from test_wy_chunk import counting

from mirasc import testing

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL_HALF = 3e-2  # bf16 inputs and outputs


def chunked_host(module):
    """The host side of a spec's chunked MLP kernels: the dual form's, or kl's."""
    backend = module.triton_backend
    return backend.mlp if hasattr(backend, "mlp") else backend.kl


def counting_chunked_calls(module):
    """The number of calls that took the chunked kernels, in a one-element list (any
    instance's: a spec's op is registered once per process, by the first import of it)."""
    return counting(type(chunked_host(module)), "launch_forward")


@contextlib.contextmanager
def short_calls_chunked(module):
    """Calls of 16 tokens or more take the chunked kernels for the block."""
    host = chunked_host(module)
    threshold, host.min_tokens = host.min_tokens, 16
    try:
        yield
    finally:
        host.min_tokens = threshold


@pytest.mark.parametrize(
    "name,T,D,dtype",
    [("titans", 37, 20, torch.float32), ("titans", 33, 60, torch.float32),
     ("ttt_mlp", 40, 12, torch.bfloat16), ("yaad", 45, 20, torch.float32),
     ("moneta", 48, 12, torch.float32)],
)  # fmt: skip
def test_shipped_mlp_memories(shipped, name, T, D, dtype):
    """Titans (momentum, decay, SiLU; also at D = 60: rows padded to tiles of 64, a hidden
    size of 240), TTT-MLP (bf16 inputs, two sequences), YAAD (a loss with a row sum and a gate
    parameter) and MONETA (lq retention: the normalisers, and each complete chunk's last read
    of the normalised end state, the final one included) at chunk 16, ragged last chunks
    (MONETA: complete), with a learned initial state."""
    module = shipped[name]
    B = 2 if dtype == torch.bfloat16 else 1
    case = testing.make_case(testing.spec_of(module), B=B, T=T, H=2, Dk=D, seed=3, dtype=dtype,
                             with_initial_state=True)  # fmt: skip
    with counting_chunked_calls(module) as calls, short_calls_chunked(module):
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL_CASE32 if dtype == torch.float32 else TOL_HALF, f"{name} T={T}")


def mlp_spec(activation: str, residual: bool, norm: bool, bias: str, retention: str,
             algorithm: str, chunk: int, clip: float | None = None) -> str:  # fmt: skip
    """A two-layer MLP memory the chunked kernels take."""
    arch = (
        f"mlp(depth: 2, expansion: 4, activation: {activation}, residual: {str(residual).lower()}"
    )
    arch += ", norm: layernorm)" if norm else ")"
    gates = ["gate eta = 0.3 * sigmoid(z)"]
    gates += ["gate alpha = 0.2 * sigmoid(z)"] if retention != "none" else []
    gates += ["gate d = softplus(z)"] if "delta: d" in bias else []
    gates += ["gate beta = 0.9 * sigmoid(z)"] if "momentum" in algorithm else []
    bias_line = bias if bias.startswith("bias(") else f"bias = {bias}"  # a written formula
    lines = [f"architecture = {arch}", bias_line, f"retention = {retention}",
             f"algorithm = {algorithm}", f"chunk = {chunk}", *gates]  # fmt: skip
    lines += [f"clip = {clip}"] if clip is not None else []
    return "memory m {\n    " + "\n    ".join(lines) + "\n}\n"


@settings(max_examples=3, deadline=None)
@given(
    activation=st.sampled_from(["silu", "gelu", "sigmoid", "tanh"]),
    residual=st.booleans(),
    norm=st.booleans(),
    bias=st.sampled_from(["l2", "huber(delta: d)", "yaad(delta: d)", "dot"]),
    retention=st.sampled_from(
        ["none", "decay(alpha)", "l2(alpha)", "lq(q: 3, keep: alpha)", "decay(alpha, first: true)"]
    ),
    momentum=st.booleans(),
    chunk=st.sampled_from([16, 32]),
    clip=st.sampled_from([None, 0.05, 1.0]),
    T=st.integers(17, 50),
    seed=st.integers(0, 2**16),
)
def test_random_mlp_specs_match_reference(compile_text, activation, residual, norm, bias,
                                          retention, momentum, chunk, clip, T, seed):  # fmt: skip
    """Drawn activations (sigmoid: act(0) != 0, so padded hidden units must be masked),
    residual and LayerNorm reads or not (without a residual, Dv = 24 != Dk), losses,
    retentions (MONETA's lq with q = 3 and decay applied first among them), gd or momentum,
    chunks and the soft clip (0.05 clips every token)."""
    if retention.startswith(("l2", "lq")) or "first" in retention:
        momentum = False  # momentum takes none or decay retention, first only gd
    algorithm = "momentum(lr: eta, momentum: beta)" if momentum else "gd(lr: eta)"
    text = mlp_spec(activation, residual, norm, bias, retention, algorithm, chunk, clip)
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=1, Dk=20, Dv=24, seed=seed,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with counting_chunked_calls(module) as calls, short_calls_chunked(module):
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    # YAAD's gate gradient loses digits in fp32 on some draws, in every backend (sigmoid, clip
    # 1.0, T = 17, seed 0: these kernels 5.0e-3, the torch backend 3.4e-3): the deep kernels'
    # and the recurrent kernels' bound
    assert_as_accurate_as_fp32_torch(module, case, errors, f"{text} T={T}")


def test_a_long_call_without_gradients(shipped):
    """At the default threshold, a 70-token no-grad call (evaluation, prefill) takes the
    chunked forward kernel, which then saves no states: output and final state as the
    reference's."""
    module = shipped["titans"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=2, Dk=20, seed=4,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    o_ref, s_ref = testing.call(module, case.to(dtype=torch.float64), backend="reference")
    with counting_chunked_calls(module) as calls, torch.no_grad():
        o, s = testing.call(module, case.to(DEVICE), backend="triton")
    assert calls[0] == 1
    errors = [testing.relative_error(o.cpu(), o_ref.detach())]
    errors += [testing.relative_error(a.cpu(), b.detach()) for a, b in zip(s, s_ref, strict=True)]
    assert max(errors) < TOL_CASE32, errors


def test_what_the_chunked_kernels_do_not_take(shipped):
    """With autograd, calls shorter than 64 tokens and calls continuing a chunk keep the
    recurrent kernels; without it, the chunked kernels take both."""
    module = shipped["titans"]
    case = testing.make_case(testing.spec_of(module), B=1, T=63, H=1, Dk=8, seed=1,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    q = case.q.clone().requires_grad_(True)
    with counting_chunked_calls(module) as calls:
        module.op(q, case.k, case.v, **case.gates, scale=case.scale,
                  initial_state=case.initial_state, backend="triton")  # fmt: skip
    assert calls[0] == 0
    mlp = module.triton_backend.mlp
    q = torch.zeros(1, 80, 1, 8, device=DEVICE)
    assert "chunk_offset" in mlp.unsupported(q, q, chunk_offset=3)
    with torch.no_grad():
        assert mlp.unsupported(q[:, :1], q[:, :1], chunk_offset=3) is None


@pytest.mark.parametrize("name", ["titans", "moneta", "yaad"])
def test_decoding_token_by_token_on_the_chunked_kernels(shipped, name):
    """Without autograd, a prefill ending inside a chunk, then one call per token continuing
    its chunk from the anchor (Titans: momentum; MONETA: lq's normalisers, taken at the anchor,
    and the exact read at each chunk's end; YAAD: a loss gate), all on the chunked forward
    kernel: together they equal one pass."""
    module = shipped[name]
    case = testing.make_case(testing.spec_of(module), B=1, T=40, H=2, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting_chunked_calls(module) as calls, torch.no_grad():
        error = testing.decoding_error(module, case, 21, backend="triton")
    assert calls[0] == 1 + 1 + 1 + 19  # the whole pass, the prefill's two calls, 19 tokens
    assert error < TOL_CASE32, error


def test_prefill_on_the_chunked_kernels_then_decoding_on_the_recurrent_ones(shipped):
    """A 64-token prefill (chunked kernels), then, with autograd, calls continuing the next
    chunk from its anchor (recurrent kernels): together they equal one pass."""
    module = shipped["titans"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    case.q.requires_grad_(True)
    with counting_chunked_calls(module) as calls:
        error = testing.continuation_error(module, case, 66, backend="triton")
    assert calls[0] == 2  # the whole pass and the 64-token prefix
    assert error < TOL_CASE32, error


def assert_compiled_matches_eager(module) -> None:
    """fullgraph=True through a spec's chunked op pair (threshold lowered): output and the
    gradients of q and of the initial state as in eager mode."""
    case = testing.make_case(testing.spec_of(module), B=1, T=20, H=1, Dk=8, seed=1,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip

    def f(q, state):
        """The op's output on the Triton backend."""
        o, _ = module.op(q, case.k, case.v, **case.gates, scale=case.scale, initial_state=state,
                         backend="triton")  # fmt: skip
        return o

    leaves = [case.q.clone().requires_grad_(True)]
    leaves += [s.clone().requires_grad_(True) for s in case.initial_state]
    with counting_chunked_calls(module) as calls, short_calls_chunked(module):
        eager = f(leaves[0], tuple(leaves[1:]))
        g_eager = torch.autograd.grad(eager.sum(), leaves)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(
            leaves[0], tuple(leaves[1:])
        )
        g_compiled = torch.autograd.grad(compiled.sum(), leaves)
    assert calls[0] >= 2
    assert torch.allclose(compiled, eager)
    assert all(torch.allclose(a, b) for a, b in zip(g_compiled, g_eager, strict=True))


def test_torch_compile_traces_the_chunked_custom_ops_without_graph_breaks(shipped):
    """The kernels are torch.library ops with fake implementations."""
    assert_compiled_matches_eager(shipped["titans"])
