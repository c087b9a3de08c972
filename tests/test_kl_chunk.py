"""The chunked forward kernel of two-layer MLP memories under kl retention (MEMORA;
mirasc.runtime.kl_chunk, printed per spec with its loss and activation), which the Triton
backend runs for long calls that need no gradient, against the float64 autograd reference:
outputs and final states. Without a GPU it runs in Triton's interpreter (conftest sets
TRITON_INTERPRET=1). Head sizes of 20 and 12 give hidden sizes of 80 and 48 at expansion 4,
so the last hidden tile of 32 is partly masked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_backend import TOL32
from test_mlp_chunk import TOL_HALF
from test_wy_chunk import counting

from mirasc import testing

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]

# non-centred read, no LayerNorm or residual, a loss with a gate parameter, chunk 32
PLAIN_KL = """memory plain_kl {
    architecture = mlp(depth: 2, expansion: 4, activation: silu)
    bias         = huber(delta: d)
    retention    = kl(keep: a)
    algorithm    = gd(lr: eta)
    chunk        = 32
    gate eta = 0.05 * sigmoid(z)
    gate a   = sigmoid(z)
    gate d   = softplus(z)
}
"""


def no_grad_errors(module, case) -> list[float]:
    """The relative errors of a no-grad Triton call's output and final state against the
    reference's, and the number of calls that took the chunked kernel."""
    o_ref, s_ref = testing.call(module, case.to(dtype=torch.float64), backend="reference")
    with counting(type(module.triton_backend.kl), "launch") as calls, torch.no_grad():
        o, s = testing.call(module, case.to(DEVICE), backend="triton")
    assert calls[0] == 1
    errors = [testing.relative_error(o.cpu().double(), o_ref.detach())]
    pairs = zip(s, s_ref, strict=True)
    return errors + [testing.relative_error(a.cpu().double(), b.detach()) for a, b in pairs]


@pytest.mark.parametrize("T,D,dtype", [(70, 20, torch.float32), (80, 16, torch.bfloat16)])
def test_memora_without_gradients(shipped, T, D, dtype):
    """The shipped MEMORA (centred read, LayerNorm and residual, chunk 16) on a call of 70
    tokens (a ragged last chunk) and on bf16 inputs: every token reads its own state."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=2, Dk=D, seed=4, dtype=dtype,
                             with_initial_state=True)  # fmt: skip
    tol = TOL32 if dtype == torch.float32 else TOL_HALF
    errors = no_grad_errors(module, case)
    assert max(errors) < tol, errors


def test_a_plain_kl_memory_with_a_loss_gate(compile_text):
    module = compile_text(PLAIN_KL)
    case = testing.make_case(testing.spec_of(module), B=1, T=100, H=1, Dk=12, seed=7,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    errors = no_grad_errors(module, case)
    assert max(errors) < TOL32, errors


def test_prefill_on_the_chunked_kernel_then_decoding_on_the_recurrent_ones(shipped):
    """A 64-token prefill (chunked kernel), then calls continuing the next chunk from its
    anchor (recurrent kernels): together they equal one pass."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting(type(module.triton_backend.kl), "launch") as calls, torch.no_grad():
        error = testing.continuation_error(module, case, 66, backend="triton")
    assert calls[0] == 2  # the whole pass and the 64-token prefix
    assert error < TOL32, error


def test_calls_that_need_a_gradient_keep_the_recurrent_kernels(shipped):
    module = shipped["memora"]
    kl = module.triton_backend.kl
    q = torch.zeros(1, 64, 1, 8)
    gate = torch.zeros(1, 64, 1, requires_grad=True)
    assert "no backward pass" in kl.unsupported(q, q, 0, (gate,))
    with torch.no_grad():
        assert kl.unsupported(q.to(DEVICE), q.to(DEVICE), 0, (gate,)) is None
    assert "fewer than 64 tokens" in kl.unsupported(q[:, :63], q[:, :63], 0, ())
    assert "continues a chunk" in kl.unsupported(q, q, 3, ())


def test_the_chunked_kl_kernel_uses_tensor_cores_and_does_not_spill():
    """MEMORA's chunked forward kernel at D = 64, bf16 inputs, compiled for sm_90 as a long
    call launches it (the recurrent forward kernel spills 2.6 KB per thread there)."""
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import dataclasses, json, sys; sys.path[:0] = sys.argv[1:]; import gpu_static; "
        "print(json.dumps(dataclasses.asdict(gpu_static.compile_fresh("
        "('memora', 'kl:forward', 64)))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks"), str(ROOT)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["mma"] + row["wgmma"] > 0 and row["sass_mma"] > 0, row
    assert row["spill_stores"] == row["spill_loads"] == 0, row
