"""The chunked dual-form Triton kernels (mirasc.runtime.dual_chunk, printed per spec with its
loss) that the Triton backend of a linear memory trained by gd runs for training-length calls,
against the float64 autograd reference: outputs, final states and the gradients of q, k, v,
every gate (the loss's parameters included) and the initial state. Without a GPU the kernels
run in Triton's interpreter (conftest sets TRITON_INTERPRET=1). Tolerances as in
test_triton_backend: TOL32 for fp32 inputs on drawn specs, TOL_CASE32 on fixed cases, 3e-2
for bf16.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_backend import TOL32, TOL_CASE32, assert_close
from test_wy_chunk import compiled_matches_eager, counting

from mirasc import testing
from mirasc.derivation.plan import dual_chunk_refusal

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL_HALF = 3e-2

BIASES = [
    "l2",
    "huber(delta: d)",
    "yaad(delta: d)",
    "lp(p: 3)",
    "bias(y, v) = sum(log(cosh(y - v)))",
    "dot",
]  # yaad: a row sum (the norm of the residual); the rest coordinate-wise
RETENTIONS = [
    "none",
    "decay(alpha)",
    "l2(alpha)",
    "decay(alpha, first: true)",
    "lq(q: 3, keep: alpha)",
]
ALGORITHMS = ["gd(lr: eta)", "momentum(lr: eta, momentum: beta)"]


def linear_spec(bias: str, retention: str, chunk: int, algorithm: str = ALGORITHMS[0],
                arch: str = "linear", clip: float | None = None) -> str:  # fmt: skip
    """A linear memory trained by gd or momentum: what the chunked dual-form kernels take."""
    bias_line = bias if bias.startswith("bias(") else f"bias = {bias}"
    gates = ["gate eta = sigmoid(z)"]
    gates += ["gate alpha = 0.2 * sigmoid(z)"] if retention != "none" else []
    gates += ["gate d = softplus(z)"] if "delta: d" in bias else []
    gates += ["gate beta = 0.9 * sigmoid(z)"] if "momentum" in algorithm else []
    body = "\n    ".join(
        [f"architecture = {arch}", bias_line, f"retention = {retention}",
         f"algorithm = {algorithm}", f"chunk = {chunk}", *gates,
         *([f"clip = {clip}"] if clip is not None else [])]
    )  # fmt: skip
    return f"memory lin {{\n    {body}\n}}\n"


def counting_chunked_calls(module):
    """The number of calls that took the chunked dual-form kernels, in a one-element list (any
    instance's: a spec's op is registered once per process, by the first import of it)."""
    return counting(type(module.triton_backend.dual), "launch_forward")


@settings(max_examples=4, deadline=None)
@given(
    bias=st.sampled_from(BIASES),
    retention=st.sampled_from(RETENTIONS),
    algorithm=st.sampled_from(ALGORITHMS),
    arch=st.sampled_from(
        [
            "linear",
            "linear(residual: true)",
            "linear(norm: layernorm)",
            "linear(residual: true, norm: layernorm)",
        ]
    ),
    clip=st.sampled_from([None, 1.0]),
    chunk=st.sampled_from([16, 32]),
    T=st.integers(64, 100),
    D=st.integers(3, 8),
    initial=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_linear_specs_match_reference(compile_text, bias, retention, algorithm, arch,
                                             clip, chunk, T, D, initial, seed):  # fmt: skip
    """Drawn losses (built-in, a written formula), retentions (decay applied first and
    MONETA's lq among them), gd or momentum, residual and LayerNorm reads (TTT-Linear's) or not, the soft clip
    or not, and chunks; T past 64, mostly not a multiple of the chunk (a ragged last chunk)."""
    # not in the language: momentum with l2 or lq retention, or with decay applied first
    gd_only = retention.startswith(("l2", "lq")) or "first" in retention
    assume(not (gd_only and "momentum" in algorithm))
    text = linear_spec(bias, retention, chunk, algorithm, arch, clip)
    module = compile_text(text)
    spec = testing.spec_of(module)
    Dv = D if "residual" in arch else D + 1  # a residual read needs Dv = Dk
    case = testing.make_case(spec, B=2, T=T, H=1, Dk=D, Dv=Dv, seed=seed,
                             dtype=torch.float32, with_initial_state=initial)  # fmt: skip
    o_exact, _ = testing.call(module, case.to(dtype=torch.float64), backend="reference")
    assume(torch.isfinite(o_exact).all())  # l_3 with no retention can blow up within T tokens
    with counting_chunked_calls(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL32, f"{text} T={T} D={D} {initial=}")


@pytest.mark.parametrize(
    "T,Dk,Dv,dtype",  # 60: head sizes padded to tiles of 64; Dv 80: two value tiles of 64
    [(70, 60, 60, torch.float32), (80, 16, 24, torch.bfloat16), (66, 16, 80, torch.float32)],
)
def test_shipped_linear_attention(shipped, T, Dk, Dv, dtype):
    """linear_attention at its shipped chunk of 64: an odd head size, bf16 inputs, and value
    columns split across programs (its loss is coordinate-wise)."""
    module = shipped["linear_attention"]
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=2, Dk=Dk, Dv=Dv, seed=5,
                             dtype=dtype, with_initial_state=True)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, TOL_CASE32 if dtype == torch.float32 else TOL_HALF, f"T={T} {dtype}")


def test_prefill_on_the_chunked_kernels_then_decoding_on_the_recurrent_ones(compile_text):
    """A 64-token prefill (chunked kernels), then single-token calls continuing the next chunk
    from its anchor (recurrent kernels): together they equal one pass of the reference."""
    module = compile_text(linear_spec("huber(delta: d)", "decay(alpha)", 16, ALGORITHMS[1]))
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=4, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        errors = [testing.continuation_error(module, case, split, backend="triton")
                  for split in (64, 66)]  # fmt: skip
    assert calls[0] >= 2  # the whole pass and each 64-token prefix
    assert max(errors) < TOL_CASE32, errors


def test_what_the_chunked_kernels_do_not_take(shipped, compile_text):
    """Short calls and continued chunks keep the recurrent kernels; specs outside the kernels'
    reach are stated by the plan (and `mirasc explain`), and compile without them."""
    module = shipped["linear_attention"]
    spec = testing.spec_of(module)
    with counting_chunked_calls(module) as calls:
        testing.call(module, testing.make_case(spec, B=1, T=5, H=1, Dk=4).to(DEVICE, torch.float32),
                     backend="triton")  # fmt: skip
    assert calls[0] == 0
    dual = module.triton_backend.dual
    q = torch.zeros(1, 80, 1, 4, device=DEVICE)
    assert "chunk_offset" in dual.unsupported(q, q, chunk_offset=3)
    wide = torch.zeros(1, 80, 1, 256, device=DEVICE)
    assert "at most" in dual.unsupported(wide, wide)
    assert dual_chunk_refusal(testing.spec_of(shipped["memora"])) == ""  # its own kl kernels
    small = compile_text(linear_spec("l2", "none", 8))
    assert not hasattr(small.triton_backend, "dual")


def test_torch_compile_traces_the_chunked_custom_op_without_graph_breaks(shipped):
    """fullgraph=True: the chunked kernels are torch.library ops with fake implementations."""
    module = shipped["linear_attention"]
    case = testing.make_case(testing.spec_of(module), B=1, T=64, H=1, Dk=16, seed=1,
                             dtype=torch.float32).to(DEVICE)  # fmt: skip
    with counting_chunked_calls(module) as calls:
        compiled_matches_eager(module, case)
    assert calls[0] >= 2


def test_momentum_kernels_compile_for_a_gpu(compile_text):
    """The interpreter accepts code a GPU compiler refuses: a momentum spec's dual-form kernels
    (linear_attention's are compiled by test_gpu_static) compiled to a Hopper cubin."""
    if DEVICE == "cuda" or "nvidia" not in triton.backends.backends:
        pytest.skip("compiled for the real device on CUDA; this triton has no NVIDIA backend")
    module = compile_text(linear_spec("huber(delta: d)", "decay(alpha)", 16, ALGORITHMS[1]))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).parent / "gpu" / "compile_kernels.py"
    done = subprocess.run([sys.executable, str(script), str(Path(module.__file__).parent)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stdout + done.stderr
