"""The chunked kernels of linear and MLP memories under kl retention (MEMORA;
mirasc.runtime.kl_chunk, and deep_chunk's for three layers or more, printed per spec with its
loss and activation), which the Triton
backend runs for training-length calls, against the float64 autograd reference: outputs, final
states and the gradients of q, k, v, every gate (the loss's parameters included), the initial
state and LayerNorm's gain and bias. Without a GPU they run in Triton's interpreter (conftest
sets TRITON_INTERPRET=1). Gradient cases lower the kernels' 64-token threshold (a dispatch
choice, not semantics) to keep the interpreter's time short; a head size of 12 gives a hidden
size of 48, so the last hidden tile is partly masked.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_backend import TOL32, TOL_CASE32, assert_close
from test_mlp_chunk import TOL_HALF, assert_compiled_matches_eager
from test_wy_chunk import counting

from mirasc import testing

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

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


# fp32 on the fixed kl cases below: worst measured 6.9e-5 (the linear kl memory with clip,
# its retention gate's gradient); drawn specs keep TOL32
TOL_KL32 = 5e-4


def assert_chunked_matches_reference(module, case, context: str, tol: float = TOL_KL32) -> None:
    """One call through the chunked kernels, its forward and backward pass held to the
    reference at the fp32 tolerance `tol`."""
    with short_calls_chunked(module) as calls:
        errors = testing.compare(module, case.to(DEVICE), "triton")
    assert calls[0] == 1
    assert_close(errors, tol, context)


def test_shipped_memora(shipped):
    """MEMORA (centred read, LayerNorm and residual, chunk 16) over three chunks, the last
    ragged, with a learned initial state."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=1, Dk=12, seed=3,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, "memora T=37")


def test_a_plain_kl_memory_with_a_loss_gate(compile_text):
    """A read without centring, LayerNorm or residual, Huber's gate, chunk 32 (two chunks,
    the last ragged)."""
    module = compile_text(PLAIN_KL)
    case = testing.make_case(testing.spec_of(module), B=1, T=41, H=1, Dk=8, seed=5,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, "plain kl T=41")


def test_a_linear_kl_memory(compile_text):
    """A linear memory on the simplex (each row of W [Dk, Dv] over Dv, whole in one tile) with
    the centred read, LayerNorm and residual, and Huber's gate."""
    text = (
        PLAIN_KL.replace("plain_kl", "linear_kl")
        .replace(
            "mlp(depth: 2, expansion: 4, activation: silu)",
            "linear(residual: true, norm: layernorm)",
        )
        .replace("kl(keep: a)", "kl(keep: a, centred: true)")
        .replace("chunk        = 32", "chunk        = 16")
    )
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=1, Dk=12, seed=6,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, "linear kl T=37")


MEMORA_ARCH = "mlp(depth: 2, expansion: 4, activation: gelu, residual: true, norm: layernorm)"
CLIPPED_KL = """memory clipped_kl {
    architecture = MEMORY
    bias         = l2
    retention    = kl(keep: a, centred: true)
    algorithm    = gd(lr: eta)
    chunk        = 16
    clip         = 0.1
    gate eta = 0.05 * sigmoid(z)
    gate a   = sigmoid(z)
}
"""


MEMORA3 = MEMORA_ARCH.replace("depth: 2", "depth: 3")
DEEP_MEMORA = CLIPPED_KL.replace("MEMORY", MEMORA3).replace("    clip         = 0.1\n", "")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_deep_memora(compile_text, dtype):
    """MEMORA's memory with three layers on the deep kl kernels (each layer's per-token row
    softmaxes a tile of its state at a time, the surprise and its reverse shared with the deep
    gd kernels): centred reads, LayerNorm and residual, a ragged last chunk; bf16 inputs too."""
    module = compile_text(DEEP_MEMORA)
    assert type(module.triton_backend.kl).__name__ == "DeepKlChunk"
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=2, Dk=12, seed=3, dtype=dtype,
                             with_initial_state=True)  # fmt: skip
    tol = TOL_KL32 if dtype == torch.float32 else TOL_HALF
    assert_chunked_matches_reference(module, case, f"deep memora {dtype}", tol)


def test_a_deep_plain_kl_memory_with_clip(compile_text):
    """Four layers without centring, LayerNorm or residual (Dv = 20 != Dk), sigmoid (act(0) !=
    0: padded units must be masked), Huber's gate, chunk 32 and a clip of 0.2 (its reverse
    through every layer's |A_l|^2 and |G_l|^2)."""
    text = (PLAIN_KL.replace("depth: 2, expansion: 4, activation: silu",
                             "depth: 4, expansion: 2, activation: sigmoid")
            .replace("chunk        = 32", "chunk        = 32\n    clip         = 0.2"))  # fmt: skip
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=45, H=1, Dk=12, Dv=20, seed=3,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, "deep plain kl with clip T=45")


def test_a_near_constant_layernorm_input_under_near_uniform_rows(compile_text):
    """A drawn case (sigmoid hidden units near 1/2, rows near uniform, so the memory's output
    is near constant across its columns and LayerNorm's rstd is large): LayerNorm's backward
    must leave no rounding in its rows' mean, which the rows pass on unchanged to q's
    gradient (6.9e-3 off before, 5.5e-5 since; the torch backend's fp32 error: 1.1e-4)."""
    text = """memory near_constant {
    architecture = mlp(depth: 2, expansion: 4, activation: sigmoid, residual: false, norm: layernorm)
    bias = dot
    retention = kl(keep: a)
    algorithm = gd(lr: eta)
    chunk = 16
    clip = 0.2
    gate eta = 0.05 * sigmoid(z)
    gate a = sigmoid(z)
}
"""
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=42, H=1, Dk=12, Dv=16, seed=428,
                             dtype=torch.float32, with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, "near-constant LayerNorm input", TOL32)


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_clip_with_kl(compile_text, arch):
    """MEMORA's memory (or a linear one), with each token's gradient soft-clamped to norm 0.1,
    well below its size here, so that the clamp and its reverse (through |G1|^2 and |A1|^2 of
    the surprise's forward pass) carry weight."""
    memory = MEMORA_ARCH if arch == "mlp" else "linear(residual: true, norm: layernorm)"
    text = CLIPPED_KL.replace("MEMORY", memory)
    module = compile_text(text)
    # the linear memory's Dk = 40 crosses three tiles of rows in the backward kernel (16 each),
    # two in the forward (32), the last ones partly masked
    case = testing.make_case(testing.spec_of(module), B=1, T=37, H=1,
                             Dk=12 if arch == "mlp" else 40, seed=7, dtype=torch.float32,
                             with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, f"{arch} kl with clip T=37")


def test_a_long_bf16_call_without_gradients(shipped):
    """At the default threshold, a 64-token no-grad call on bf16 inputs (evaluation, prefill;
    two sequences) takes the chunked forward kernel, which then saves no states."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=2, T=64, H=1, Dk=16, seed=4,
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
    """A 64-token prefill (chunked kernels), then, with autograd, calls continuing the next
    chunk from its anchor (recurrent kernels): together they equal one pass."""
    module = shipped["memora"]
    case = testing.make_case(testing.spec_of(module), B=1, T=70, H=1, Dk=8, seed=2,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    case.q.requires_grad_(True)
    with counting(type(module.triton_backend.kl), "launch_forward") as calls:
        error = testing.continuation_error(module, case, 66, backend="triton")
    assert calls[0] == 2  # the whole pass and the 64-token prefix
    assert error < TOL_CASE32, error


@pytest.mark.parametrize("text", ["memora", PLAIN_KL, DEEP_MEMORA], ids=["memora", "plain", "deep"])
def test_decoding_token_by_token_on_the_chunked_kernels(shipped, compile_text, text):
    """Without autograd, a prefill ending inside a chunk, then one call per token continuing
    its chunk (MEMORA: centred read, LayerNorm, chunk 16; a plain kl memory with a loss gate,
    chunk 32; MEMORA with three layers), each first chunk's surprise at its anchor and its
    logits from the state, all on
    the chunked forward kernel: together they equal one pass. A linear kl memory decodes on its
    recurrent kernels."""
    module = shipped[text] if text == "memora" else compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=40, H=1, Dk=8, seed=3,
                             dtype=torch.float32, with_initial_state=True).to(DEVICE)  # fmt: skip
    with counting(type(module.triton_backend.kl), "launch_forward") as calls, torch.no_grad():
        error = testing.decoding_error(module, case, 21, backend="triton")
    prefill_calls = 2 if module.torch_backend.CHUNK <= 21 else 1  # chunk 32: no aligned part
    assert calls[0] == 1 + prefill_calls + 19  # the whole pass, the prefill, 19 tokens
    assert error < TOL_CASE32, error
    linear = compile_text(CLIPPED_KL.replace("MEMORY", "linear(residual: true, norm: layernorm)"))
    q = torch.zeros(1, 1, 1, 8, device=DEVICE)
    with torch.no_grad():
        assert linear.triton_backend.kl.unsupported(q, q, chunk_offset=3) is not None


@settings(max_examples=3, deadline=None)  # the first is the minimal draw; ~20 s each
@given(
    depth=st.sampled_from([1, 2, 3]),
    activation=st.sampled_from(["silu", "gelu", "sigmoid", "tanh"]),
    residual=st.booleans(),
    norm=st.booleans(),
    centred=st.booleans(),
    bias=st.sampled_from(["l2", "huber(delta: d)", "yaad(delta: d)", "dot"]),
    chunk=st.sampled_from([16, 32]),
    clip=st.sampled_from([None, 0.2]),
    T=st.integers(17, 50),
    seed=st.integers(0, 2**16),
)
def test_random_kl_specs_match_reference(compile_text, depth, activation, residual, norm, centred,
                                         bias, chunk, clip, T, seed):  # fmt: skip
    """Drawn linear, two- or three-layer memories, activations (sigmoid: act(0) != 0, so padded hidden
    units must be masked), residual and LayerNorm reads or not (without a residual,
    Dv = 16 != Dk), centred reads or not, losses, chunks and clip."""
    arch = (
        "linear(" if depth == 1 else f"mlp(depth: {depth}, expansion: 4, activation: {activation}, "
    )
    arch += f"residual: {str(residual).lower()}" + (", norm: layernorm)" if norm else ")")
    gates = ["gate eta = 0.05 * sigmoid(z)", "gate a = sigmoid(z)"]
    gates += ["gate d = softplus(z)"] if "delta: d" in bias else []
    retention = "kl(keep: a, centred: true)" if centred else "kl(keep: a)"
    lines = [f"architecture = {arch}", f"bias = {bias}", f"retention = {retention}",
             "algorithm = gd(lr: eta)", f"chunk = {chunk}", *gates]  # fmt: skip
    lines += [f"clip = {clip}"] if clip is not None else []
    text = "memory m {\n    " + "\n    ".join(lines) + "\n}\n"
    module = compile_text(text)
    case = testing.make_case(testing.spec_of(module), B=1, T=T, H=1, Dk=12,
                             Dv=12 if residual else 16, seed=seed, dtype=torch.float32,
                             with_initial_state=True)  # fmt: skip
    assert_chunked_matches_reference(module, case, f"{text} T={T}", TOL32)


@pytest.mark.parametrize("text", ["memora", DEEP_MEMORA], ids=["memora", "deep"])
def test_torch_compile_traces_the_kl_custom_ops_without_graph_breaks(shipped, compile_text, text):
    """fullgraph=True through the kl op pair (two layers, and three on the deep kernels), as
    through the MLP memories' dual-form pair."""
    assert_compiled_matches_eager(shipped[text] if text == "memora" else compile_text(text))
