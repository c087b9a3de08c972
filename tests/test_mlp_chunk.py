"""The chunked dual-form forward kernel of two-layer MLP memories (mirasc.runtime.mlp_chunk,
printed per spec with its loss and activation) that the Triton backend runs for calls that
need no gradients, against the float64 autograd reference on the same (rounded) inputs:
outputs and final states. Without a GPU the kernel runs in Triton's interpreter (conftest
sets TRITON_INTERPRET=1). Head sizes of 20 give a hidden size of 80 at expansion 4: two
hidden tiles, the second one partly masked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_backend import TOL32
from test_wy_chunk import counting

from mirasc import testing

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL_HALF = 3e-2  # bf16 outputs are rounded to 8 bits
ROOT = Path(__file__).resolve().parents[1]


def forward_errors(module, case, dtype) -> dict:
    """Relative errors of the Triton backend's no-grad output and final state against the
    reference on the same inputs rounded to `dtype`."""
    rounded = case.to(dtype=dtype)
    o_ref, s_ref = testing.call(module, rounded.to(dtype=torch.float64), backend="reference")
    with torch.no_grad():
        o, s = testing.call(module, rounded.to(DEVICE), backend="triton")
    errors = {"o": testing.relative_error(o.cpu(), o_ref.detach())}
    for i, (got, want) in enumerate(zip(s, s_ref, strict=True)):
        errors[f"state{i}"] = testing.relative_error(got.cpu(), want.detach())
    return errors


def counting_chunked_calls(module):
    """The number of calls that took the chunked forward kernel, in a one-element list (any
    instance's: a spec's op is registered once per process, by the first import of it)."""
    return counting(type(module.triton_backend.mlp), "launch")


@pytest.mark.parametrize(
    "name,T,D,dtype",
    [("titans", 70, 20, torch.float32), ("ttt_mlp", 64, 12, torch.bfloat16),
     ("yaad", 100, 20, torch.float32)],
)  # fmt: skip
def test_shipped_mlp_memories(shipped, name, T, D, dtype):
    """Titans (momentum, decay), TTT-MLP (bf16 inputs) and YAAD (a loss with a row sum and a
    gate parameter) at chunk 16, ragged last chunks."""
    module = shipped[name]
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=2, Dk=D, seed=3,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        errors = forward_errors(module, case, dtype)
    assert calls[0] == 1
    tol = TOL32 if dtype == torch.float32 else TOL_HALF
    assert max(errors.values()) < tol, errors


def mlp_spec(activation: str, residual: bool, norm: bool, bias: str, retention: str,
             algorithm: str, chunk: int) -> str:  # fmt: skip
    """A two-layer MLP memory the chunked forward kernel takes."""
    arch = (
        f"mlp(depth: 2, expansion: 4, activation: {activation}, residual: {str(residual).lower()}"
    )
    arch += ", norm: layernorm)" if norm else ")"
    gates = ["gate eta = 0.3 * sigmoid(z)"]
    gates += ["gate alpha = 0.2 * sigmoid(z)"] if retention != "none" else []
    gates += ["gate d = softplus(z)"] if "delta: d" in bias else []
    gates += ["gate beta = 0.9 * sigmoid(z)"] if "momentum" in algorithm else []
    lines = [f"architecture = {arch}", f"bias = {bias}", f"retention = {retention}",
             f"algorithm = {algorithm}", f"chunk = {chunk}", *gates]  # fmt: skip
    return "memory m {\n    " + "\n    ".join(lines) + "\n}\n"


@settings(max_examples=3, deadline=None)
@given(
    activation=st.sampled_from(["silu", "gelu", "sigmoid", "tanh"]),
    residual=st.booleans(),
    norm=st.booleans(),
    bias=st.sampled_from(["l2", "huber(delta: d)", "yaad(delta: d)", "dot"]),
    retention=st.sampled_from(["none", "decay(alpha)", "l2(alpha)"]),
    momentum=st.booleans(),
    chunk=st.sampled_from([16, 32]),
    T=st.integers(64, 90),
    seed=st.integers(0, 2**16),
)
def test_random_mlp_specs_match_reference(compile_text, activation, residual, norm, bias,
                                          retention, momentum, chunk, T, seed):  # fmt: skip
    """Drawn activations (sigmoid: act(0) != 0, so padded hidden units must be masked),
    residual and LayerNorm reads, losses, retentions, gd or momentum and chunks."""
    if retention.startswith("l2"):
        momentum = False  # not in the language
    algorithm = "momentum(lr: eta, momentum: beta)" if momentum else "gd(lr: eta)"
    text = mlp_spec(activation, residual, norm, bias, retention, algorithm, chunk)
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=1, Dk=20, seed=seed,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        errors = forward_errors(module, case, torch.float32)
    assert calls[0] == 1
    assert max(errors.values()) < TOL32, (text, T, errors)


def test_what_the_chunked_forward_kernel_does_not_take(shipped):
    """Calls that need gradients (training) and calls shorter than 64 tokens keep the
    recurrent kernels."""
    module = shipped["titans"]

    def case(T):
        return testing.make_case(testing.spec_of(module), B=1, T=T, H=1, Dk=8, seed=1,
                                 dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip

    with counting_chunked_calls(module) as calls:
        testing.call(module, case(64).map(lambda t: t.requires_grad_(True)), backend="triton")
        with torch.no_grad():
            testing.call(module, case(63), backend="triton")
    assert calls[0] == 0


def test_prefill_on_the_chunked_kernel_then_decoding_on_the_recurrent_one(shipped):
    """A no-grad 64-token prefill (chunked kernel), then calls continuing the next chunk from
    its anchor (recurrent kernels): together they equal one pass."""
    module = shipped["titans"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting_chunked_calls(module) as calls, torch.no_grad():
        error = testing.continuation_error(module, case, 66, backend="triton")
    assert calls[0] >= 2  # the whole pass and the 64-token prefix
    assert error < TOL32, error


def test_the_chunked_forward_kernel_uses_tensor_cores_and_does_not_spill(tmp_path):
    """Titans' chunked forward kernel at D = 64, bf16 inputs, compiled for sm_90 as it
    launches: tensor-core instructions and no spills."""
    import json

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "mlp.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_static.py"), "--specs", "titans",
         "--D", "64", "--kernels", "chunked", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())
    assert row["kernel"] == "mlp:forward"
    assert row["mma"] + row["wgmma"] > 0 and row["sass_mma"] > 0, row
    assert row["spill_stores"] == row["spill_loads"] == 0, row
