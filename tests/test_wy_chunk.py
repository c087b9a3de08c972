"""The chunked WY / UT Triton kernels (mirasc.runtime.wy_chunk) that the Triton backends of
deltanet and gated_deltanet run for training-length calls, against the float64 autograd
reference: outputs, final states and the gradients of q, k, v, both gates and the initial state.
Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so the
shapes are small, with chunks of 16 tokens where a test sets them and T never a multiple of the
chunk (a ragged last chunk). Tolerances: TOL_CASE32 (test_backend) for fp32 inputs, 3e-2
for bf16 (inputs rounded to 8 bits; the state stays fp32).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_backend import TOL_CASE32, assert_close

from mirasc import testing
from mirasc.errors import BackendError

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL_HALF = 3e-2


@contextlib.contextmanager
def chunked(module, block: int = 16, min_tokens: int = 1):
    """Route the module's Triton calls of at least `min_tokens` tokens to the chunked kernels
    with chunks of `block` tokens (the shipped thresholds are 64 and 64)."""
    backend = module.triton_backend
    saved = backend.WY_BLOCK, backend.WY_MIN_TOKENS
    backend.WY_BLOCK, backend.WY_MIN_TOKENS = block, min_tokens
    try:
        yield
    finally:
        backend.WY_BLOCK, backend.WY_MIN_TOKENS = saved


@contextlib.contextmanager
def counting(owner, name: str):
    """The number of calls of `owner.name` (replaced by a counting wrapper for the block), in a
    one-element list."""
    real, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        """The real callable, counted."""
        calls[0] += 1
        return real(*args, **kwargs)

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, real)


def counting_chunked_calls(module):
    """The number of calls that took the chunked WY kernels, in a one-element list."""
    return counting(module.triton_backend.wy_chunk, "forward")


@pytest.mark.parametrize(
    "name,B,H,T,Dk,Dv,initial,dtype",  # Dk 20, Dv 24: head sizes padded to tiles of 32
    [
        ("deltanet", 2, 2, 21, 16, 16, False, torch.float32),
        ("gated_deltanet", 1, 1, 45, 16, 24, True, torch.float32),
        ("deltanet", 1, 1, 37, 20, 16, True, torch.bfloat16),
        ("gated_deltanet", 1, 1, 41, 32, 16, False, torch.bfloat16),
    ],
)
def test_chunked_kernels_match_reference(shipped, name, B, H, T, Dk, Dv, initial, dtype):
    """Outputs, final state and every gradient, chunks of 16, through the op (one chunked call)."""
    module = shipped[name]
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=B, T=T, H=H, Dk=Dk, Dv=Dv, seed=3, dtype=dtype,
                             with_initial_state=initial)  # fmt: skip
    with chunked(module), counting_chunked_calls(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    tol = TOL_CASE32 if dtype == torch.float32 else TOL_HALF
    assert_close(errors, tol, f"{name} B={B} H={H} T={T} Dk={Dk} Dv={Dv} {initial=} {dtype}")


def test_the_shipped_chunk_of_64_on_a_training_length_call(shipped):
    """No patching: a call of 70 tokens takes the chunked kernels at their shipped chunk size."""
    module = shipped["gated_deltanet"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=16, seed=1,
                             dtype=torch.float32)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL_CASE32, "gated_deltanet T=70 chunk 64")


def test_prefill_on_the_chunked_kernels_then_decoding_on_the_recurrent_ones(shipped):
    """A prefill long enough for the chunked kernels, then single-token calls (the recurrent
    kernels) from its final state: together they equal one pass of the reference."""
    module = shipped["gated_deltanet"]
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=1, Dk=16, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    prefill = 33
    with chunked(module, block=16, min_tokens=prefill), counting_chunked_calls(module) as calls:
        o, state = testing.call(module, testing.slice_case(case, 0, prefill, case.initial_state),
                                backend="triton")  # fmt: skip
        pieces = [o]
        for t in range(prefill, case.q.shape[1]):
            o, state = testing.call(module, testing.slice_case(case, t, t + 1, state),
                                    backend="triton")  # fmt: skip
            pieces.append(o)
    assert calls[0] == 1
    o_ref, state_ref = testing.call(module, case, backend="reference")
    assert testing.relative_error(torch.cat(pieces, dim=1), o_ref) < TOL_CASE32
    assert testing.relative_error(state[0], state_ref[0]) < TOL_CASE32


def test_short_calls_keep_the_recurrent_kernels(shipped):
    """Below WY_MIN_TOKENS (decoding) the fused recurrent kernels serve the call."""
    module = shipped["deltanet"]
    case = testing.make_case(testing.spec_of(module), B=1, T=5, H=1, Dk=16, dtype=torch.float32)
    with counting_chunked_calls(module) as calls:
        testing.call(module, case.to(DEVICE), backend="triton")
    assert calls[0] == 0


def test_clear_errors(shipped):
    """A chunk that is no power of two >= 16, a continued chunk and too wide keys are refused."""
    module = shipped["deltanet"]
    q = torch.randn(1, 20, 1, 16, device=DEVICE)
    lr = torch.rand(1, 1, 20, device=DEVICE)
    opts = dict(c=1.0, scale=1.0, initial_state=None, output_final_state=False)
    wy = module.triton_backend.wy_chunk
    with pytest.raises(BackendError, match="power of two"):
        wy.forward(q, q, q, lr, None, block=24, **opts)
    with pytest.raises(BackendError, match="chunk_offset"):
        wy.forward(q, q, q, lr, None, chunk_offset=1, **opts)
    wide = torch.randn(1, 20, 1, 256, device=DEVICE)
    assert "key row" in wy.unsupported(wide, wide)


def compiled_matches_eager(module, case) -> None:
    """Output and q's gradient of the op on the Triton backend, eager and under
    torch.compile(fullgraph=True) (a graph break would raise), must agree."""

    def f(q, k, v):
        """The op's output on the Triton backend."""
        o, _ = module.op(q, k, v, **case.gates, scale=case.scale, backend="triton")
        return o

    q = case.q.clone().requires_grad_(True)
    eager = f(q, case.k, case.v)
    (g_eager,) = torch.autograd.grad(eager.sum(), q)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(q, case.k, case.v)
    (g_compiled,) = torch.autograd.grad(compiled.sum(), q)
    assert torch.allclose(compiled, eager) and torch.allclose(g_compiled, g_eager)


def test_torch_compile_traces_the_chunked_custom_op_without_graph_breaks(shipped):
    """fullgraph=True: the chunked kernels are torch.library ops with fake implementations."""
    module = shipped["gated_deltanet"]
    case = testing.make_case(testing.spec_of(module), B=1, T=20, H=1, Dk=16, seed=1,
                             dtype=torch.float32).to(DEVICE)  # fmt: skip
    with chunked(module), counting_chunked_calls(module) as calls:
        compiled_matches_eager(module, case)
    assert calls[0] >= 2
