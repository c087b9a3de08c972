"""The chunked dual form's explicit backward pass (`mirasc.runtime.chunked`) and kl's log-domain
chunked form (`chunked_kl`), beyond what the strategy-wide property tests in test_backend.py
cover: a call that continues a chunk from its anchor state (every gradient, the anchor state's
included, against the float64 reference, at every offset and with a ragged end), gates at their
extremes, kl's states staying on the simplex, and the activation memory the forward pass keeps
for the backward pass."""

from __future__ import annotations

import pytest
import torch

from mirasc import testing
from mirasc.testing import reference

TOL64 = 1e-9  # the same maths in another order, fp64 (see test_backend)

SPECS = {
    "momentum_clip": """memory momentum_clip {
    architecture = mlp(depth: 3, expansion: 2, activation: tanh, residual: true, norm: layernorm)
    bias = huber(delta: d)
    retention = decay(alpha)
    algorithm = momentum(lr: eta, momentum: beta)
    chunk = 4
    clip = 0.3
    gate eta = sigmoid(z)
    gate alpha = sigmoid(z)
    gate beta = sigmoid(z)
    gate d = 0.2 + softplus(z)
}
""",
    "first_l2": """memory first_l2 {
    architecture = mlp(depth: 2, expansion: 1, activation: sigmoid)
    bias(y, v) = log(1 + sum((y - v)^2)) + 0.5 * sum(y^2)
    retention = decay(alpha, first: true)
    algorithm = gd(lr: eta)
    chunk = 3
    gate eta = sigmoid(z)
    gate alpha = sigmoid(z)
}
""",
    "kl_centred": """memory kl_centred {
    architecture = mlp(depth: 2, expansion: 2, activation: gelu, residual: true, norm: layernorm)
    bias = huber(delta: d)
    retention = kl(keep: a, centred: true)
    algorithm = gd(lr: eta)
    chunk = 4
    clip = 2.0
    gate eta = 0.01 * sigmoid(z)
    gate a = sigmoid(z)
    gate d = 0.2 + softplus(z)
}
""",
    "kl_linear": """memory kl_linear {
    architecture = linear
    bias = l2
    retention = kl(keep: a)
    algorithm = gd(lr: eta)
    chunk = 3
    gate eta = sigmoid(z)
    gate a = sigmoid(z)
}
""",
    "l2_linear": """memory l2_linear {
    architecture = linear(norm: layernorm)
    bias = lp(p: 3)
    retention = l2(lam)
    algorithm = gd(lr: eta)
    chunk = 5
    gate eta = sigmoid(z)
    gate lam = sigmoid(z)
}
""",
}


def continuing_run(module, case, anchor, offset: int, backend: str, strategy=None):
    """(o, state, {input: gradient}) of a call continuing a chunk `offset` tokens in, with the
    anchor state a leaf too."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in case.tensors().items()}
    anchor = [a.detach().clone().requires_grad_(True) for a in anchor]
    gates = {n[5:]: t for n, t in leaves.items() if n.startswith("gate:")}
    initial = tuple(t for n, t in leaves.items() if n.startswith("initial_state")) or None
    ln = (leaves["ln_weight"], leaves["ln_bias"]) if "ln_weight" in leaves else (None, None)
    if strategy is not None:
        o, state = module.torch_backend.forward(
            leaves["q"], leaves["k"], leaves["v"], gates, scale=case.scale, initial_state=initial,
            output_final_state=True, ln_weight=ln[0], ln_bias=ln[1], anchor_state=anchor,
            chunk_offset=offset, strategy=strategy,
        )  # fmt: skip
    else:
        norm = {"ln_weight": ln[0], "ln_bias": ln[1]} if ln[0] is not None else {}
        o, state = module.op(
            leaves["q"], leaves["k"], leaves["v"], **gates, scale=case.scale,
            initial_state=initial, output_final_state=True, anchor_state=anchor,
            chunk_offset=offset, backend=backend, **norm,
        )  # fmt: skip
    g = torch.Generator().manual_seed(7)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum() for s in state)
    inputs = [*leaves.values(), *anchor]
    names = [*leaves, *(f"anchor[{i}]" for i in range(len(anchor)))]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = {
        n: torch.zeros_like(t) if gr is None else gr
        for n, t, gr in zip(names, inputs, grads, strict=True)
    }
    return o.detach(), [s.detach() for s in state], grads


def chunked_strategy(spec) -> str:
    return "chunked_kl" if spec.retention.kind == "kl" else "chunked"


def assert_matches_reference(module, case, anchor, offset: int) -> None:
    ref = continuing_run(module, case, anchor, offset, "reference")
    strategy = chunked_strategy(testing.spec_of(module))
    got = continuing_run(module, case, anchor, offset, "torch", strategy=strategy)
    errors = {"o": testing.relative_error(got[0], ref[0])}
    errors.update(
        {
            f"state{i}": testing.relative_error(a, b)
            for i, (a, b) in enumerate(zip(got[1], ref[1], strict=True))
        }
    )
    errors.update({f"grad:{n}": testing.relative_error(got[2][n], ref[2][n]) for n in ref[2]})
    bad = {k: v for k, v in errors.items() if not v <= TOL64}
    assert not bad, f"offset {offset}: {bad}"


def random_anchor(spec, case, seed: int) -> list:
    """Weights a chunk could have started from (a softmax for kl, random otherwise)."""
    g = torch.Generator().manual_seed(seed)
    B, _, H, Dk = case.q.shape
    shapes = testing.weight_shapes(spec, Dk, case.v.shape[-1])
    weights = [
        torch.randn(B, H, i, o, generator=g, dtype=torch.float64) * i**-0.5 for i, o in shapes
    ]
    if spec.retention.kind == "kl":
        return [torch.softmax(w, dim=-1) for w in weights]
    return weights


@pytest.mark.parametrize("name", ["titans", "ttt_mlp", "yaad", "moneta", "memora"])
def test_shipped_continuation_gradients(shipped, name):
    module = shipped[name]
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=1, T=21, H=2, Dk=4, seed=5, with_initial_state=True)
    anchor = random_anchor(spec, case, 1)
    for offset in (1, spec.chunk - 1):
        assert_matches_reference(module, case, anchor, offset)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_drawn_continuation_gradients(compile_text, name):
    module = compile_text(SPECS[name])
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=2, T=11, H=1, Dk=3, Dv=3, seed=2, with_initial_state=True)
    anchor = random_anchor(spec, case, 3)
    for offset in range(1, spec.chunk):
        assert_matches_reference(module, case, anchor, offset)


@pytest.mark.parametrize("T", [1, 3, 7, 9])  # shorter than, equal to, ragged after a chunk
def test_kl_strategies_agree_on_ragged_lengths(compile_text, T):
    module = compile_text(SPECS["kl_linear"])
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=2, T=T, H=2, Dk=3, Dv=4, seed=T)
    for strategy in ("chunked_kl", "recurrent"):
        errors = testing.compare(module, case, "torch", strategy)
        assert all(v <= TOL64 for v in errors.values()), (strategy, errors)


def test_kl_states_stay_on_the_simplex(compile_text):
    """Large steps over many chunks: every row of the final state sums to one (the lag-token
    scheme's linear steps left the simplex here and the next log W was NaN)."""
    module = compile_text(SPECS["kl_linear"])
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=2, T=40, H=2, Dk=4, seed=3)
    case.gates["eta"] = torch.full_like(case.gates["eta"], 2.0)
    for strategy in ("chunked_kl", "recurrent"):
        _, final = module.torch_backend.forward(
            case.q, case.k, case.v, case.gates, scale=case.scale,
            initial_state=case.initial_state, output_final_state=True,
            ln_weight=None, ln_bias=None, strategy=strategy,
        )  # fmt: skip
        (W,) = final
        assert torch.isfinite(W).all() and (W > 0).all()
        assert torch.allclose(W.sum(-1), torch.ones_like(W[..., 0]), atol=1e-12)


def test_centred_read_of_a_uniform_memory_is_zero(compile_text):
    """kl(centred: true) reads out * W - 1: uniform rows read as the zero map, in the oracle and
    in the compiled read alike."""
    module = compile_text(SPECS["kl_linear"].replace("kl(keep: a)", "kl(keep: a, centred: true)"))
    q = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    uniform = (torch.full((2, 2, 3, 4), 0.25, dtype=torch.float64),)
    assert module.read(q, uniform).abs().max() < 1e-15
    assert reference.read(testing.spec_of(module), q, uniform).abs().max() < 1e-15


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_gates_at_their_extremes(shipped, value):
    """Retention and momentum gates at exactly 0 and 1: products stay exact (no logarithms)."""
    module = shipped["titans"]
    spec = testing.spec_of(module)
    case = testing.make_case(spec, B=1, T=19, H=2, Dk=4, seed=4)
    case.gates["alpha"] = torch.full_like(case.gates["alpha"], value)
    case.gates["eta"] = torch.full_like(case.gates["eta"], 1.0 - value)
    errors = testing.compare(module, case, "torch", "chunked")
    assert all(v <= TOL64 for v in errors.values()), errors


def saved_bytes(module, case, strategy: str) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        testing.run(module, case, "torch", strategy)
    return sum(storages.values())


def test_explicit_backward_keeps_less_than_autograd(shipped):
    """Chunk-start states plus token-sized intermediates: less than autograd through the same
    forward pass, and per extra token far less than a state (O(T/C |state|) + O(T D))."""
    module = shipped["titans"]
    spec = testing.spec_of(module)
    B, H, D = 1, 2, 32  # per token O(D) against a state of O(D^2): apart from D = 32 on

    def case(T):
        return testing.make_case(spec, B=B, T=T, H=H, Dk=D, dtype=torch.float32, seed=0)

    short, long = (
        saved_bytes(module, case(64), "chunked"),
        saved_bytes(module, case(128), "chunked"),
    )
    assert long < saved_bytes(module, case(128), "chunked_autograd")
    state = 2 * 2 * (D * 4 * D) * 4  # W1, W2 and their momentum, fp32 bytes per (batch, head)
    assert (long - short) / (B * H * 64) < state / 4
