"""The chunked kernels of two-layer MLP memories under kl retention (MEMORA;
mirasc.runtime.kl_chunk, printed per spec with its loss and activation), which the Triton
backend runs for training-length calls, against the float64 autograd reference: outputs, final
states and the gradients of q, k, v, every gate (the loss's parameters included), the initial
state and LayerNorm's gain and bias. Without a GPU they run in Triton's interpreter (conftest
sets TRITON_INTERPRET=1). Gradient cases lower the kernels' 64-token threshold (a dispatch
choice, not semantics) to keep the interpreter's time short; a head size of 12 gives a hidden
size of 48, so the last hidden tile is partly masked.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_backend import TOL32, assert_close
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


@contextlib.contextmanager
def short_calls_chunked(module):
    """Calls of 16 tokens or more take the chunked kernels for the block; yields the number of
    backward passes they ran, in a one-element list."""
    kl = module.triton_backend.kl
    threshold, kl.min_tokens = kl.min_tokens, 16
    try:
        with counting(type(kl), "launch_backward") as calls:
            yield calls
    finally:
        kl.min_tokens = threshold


def test_shipped_memora(shipped):
    """MEMORA (centred read, LayerNorm and residual, chunk 16) over three chunks, the last
    ragged, with a learned initial state."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=2, Dk=12, seed=3,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with short_calls_chunked(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL32, "memora T=37")


def test_a_plain_kl_memory_with_a_loss_gate(compile_text):
    """A read without centring, LayerNorm or residual, Huber's gate, chunk 32 (two chunks,
    the last ragged)."""
    module = compile_text(PLAIN_KL)
    case = testing.make_case(testing.spec_of(module), B=1, T=41, H=1, Dk=12, seed=5,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    with short_calls_chunked(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL32, "plain kl T=41")


def test_a_long_bf16_call_without_gradients(shipped):
    """At the default threshold, a 70-token no-grad call on bf16 inputs (evaluation, prefill)
    takes the chunked forward kernel, which then saves no states."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=2, Dk=16, seed=4,
                             dtype=torch.bfloat16, with_initial_state=True)  # fmt: skip
    o_ref, s_ref = testing.call(module, case.to(dtype=torch.float64), backend="reference")
    with counting(type(module.triton_backend.kl), "launch_forward") as calls, torch.no_grad():
        o, s = testing.call(module, case.to(DEVICE), backend="triton")
    assert calls[0] == 1
    errors = [testing.relative_error(o.cpu().double(), o_ref.detach())]
    pairs = zip(s, s_ref, strict=True)
    errors += [testing.relative_error(a.cpu().double(), b.detach()) for a, b in pairs]
    assert max(errors) < TOL_HALF, errors


def test_prefill_on_the_chunked_kernels_then_decoding_on_the_recurrent_ones(shipped):
    """A 64-token prefill (chunked kernels), then calls continuing the next chunk from its
    anchor (recurrent kernels): together they equal one pass."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting(type(module.triton_backend.kl), "launch_forward") as calls, torch.no_grad():
        error = testing.continuation_error(module, case, 66, backend="triton")
    assert calls[0] == 2  # the whole pass and the 64-token prefix
    assert error < TOL32, error


def test_the_chunked_kl_kernels_compile_and_use_tensor_cores():
    """MEMORA's chunked kernels at D = 64, bf16 inputs, compiled for sm_90 as a training-length
    call launches them (the interpreter runs code Triton's compiler rejects): tensor-core
    instructions in both, no spills in the forward kernel (its recurrent one spills 2.6 KB per
    thread), at most 512 B in the backward kernel (README states the figure; its recurrent one
    spills 27 KB)."""
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = [("memora", "kl:forward", 64), ("memora", "kl:backward", 64)]
    code = (
        "import dataclasses, json, sys; sys.path[:0] = sys.argv[1:]; import gpu_static; "
        f"rows = gpu_static.compile_all({jobs!r}, 2); "
        "print(json.dumps([dataclasses.asdict(r) for r in rows]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks"), str(ROOT)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    forward, backward = json.loads(done.stdout.strip().splitlines()[-1])
    for row in (forward, backward):
        assert row["mma"] + row["wgmma"] > 0 and row["sass_mma"] > 0, row
    assert forward["spill_stores"] == forward["spill_loads"] == 0, forward
    assert backward["spill_stores"] <= 512, backward
