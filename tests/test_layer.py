"""The generated Layer: an nn.Module that trains, moves, saves and continues sequences."""

from __future__ import annotations

import io

import pytest
import torch

from mirasc.testing import relative_error

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


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_gradients_reach_every_parameter(shipped, name):
    torch.manual_seed(0)
    layer = shipped[name].Layer(32, 2)
    x = torch.randn(2, 19, 32)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", ["titans", "memora", "gated_deltanet"])
def test_layer_matches_reference_backend(shipped, name):
    torch.manual_seed(1)
    layer = shipped[name].Layer(16, 2).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    y = layer(x)
    layer.backend = "reference"
    assert relative_error(layer(x), y) < 1e-9


@pytest.mark.parametrize("name", ["titans", "yaad", "deltanet"])
def test_state_continues_a_sequence_at_chunk_boundaries(shipped, name):
    torch.manual_seed(2)
    module = shipped[name]
    layer = module.Layer(16, 2).double()
    chunk = module.torch_backend.CHUNK
    x = torch.randn(2, 3 * chunk + 2, 16, dtype=torch.float64)
    full = layer(x)
    first, state = layer(x[:, : 2 * chunk], use_cache=True)
    second = layer(x[:, 2 * chunk :], state=state)
    assert relative_error(torch.cat([first, second], 1), full) < 1e-10


def test_state_dict_round_trip_and_to(shipped):
    module = shipped["titans"]
    torch.manual_seed(3)
    a, b = module.Layer(16, 2), module.Layer(16, 2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    x = torch.randn(1, 5, 16)
    assert torch.equal(a(x), b(x))
    assert any("initial" in k for k in a.state_dict())  # learned per-head initial memory
    c = b.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in c.parameters())
    assert c(x.double()).dtype == torch.float64


def test_bf16_inputs_keep_fp32_state(shipped):
    module = shipped["gated_deltanet"]
    q, k, v = (torch.randn(1, 6, 2, 4).to(torch.bfloat16) for _ in range(3))
    gates = {n: torch.full((1, 6, 2), 0.3, dtype=torch.bfloat16) for n in module.GATE_NAMES}
    o, (state,) = module.op(q, k, v, **gates, output_final_state=True)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32


@pytest.mark.parametrize(
    "name,gate,target",
    [("titans", "alpha", 1e-3), ("gated_deltanet", "alpha", 1e-3), ("moneta", "a", 0.999)],
)
def test_retention_gates_start_near_their_target(shipped, name, gate, target):
    """Without an `init`, retention gates start at codegen.package_context.RETENTION_TARGETS."""
    layer = shipped[name].Layer(16, 2)
    formula = type(layer).gate_formulas[gate]
    assert torch.allclose(
        formula(layer.gate_proj[gate].bias), torch.tensor(target), rtol=0, atol=1e-4
    )


def test_gates_start_at_their_stated_init(compile_text):
    text = """memory m {
    architecture = linear
    bias = huber(delta: delta)
    retention = decay(alpha)
    algorithm = gd(lr: eta)
    gate eta = sigmoid(z)
    gate alpha = sigmoid(z), init 0.02
    gate delta = 2 * softplus(z), init 3.5
}"""
    layer = compile_text(text).Layer(16, 2)
    for gate, target in (("delta", 3.5), ("alpha", 0.02)):
        value = type(layer).gate_formulas[gate](layer.gate_proj[gate].bias)
        assert torch.allclose(value, torch.tensor(target), rtol=1e-2, atol=0)


def test_yaad_value_projection_gets_a_gradient_from_the_start(shipped):
    """YAAD's delta starts above the residual ||M(k) - v|| of a fresh layer (about 6), so tokens
    begin in the l2 branch of its switch. At delta = softplus(0) = 0.69 every token was in the
    l1 branch, whose gradient delta * sign(r) does not depend on v: v's gradient was exactly 0."""
    torch.manual_seed(0)
    layer = shipped["yaad"].Layer(64, 2)
    layer(torch.randn(2, 32, 64)).square().mean().backward()
    assert layer.v_proj.weight.grad.norm() > 0.1 * layer.q_proj.weight.grad.norm()
