"""The chunked dual form's explicit backward pass (`mirasc.runtime.chunked`), beyond what the
strategy-wide property tests in test_backend.py cover: a call that continues a chunk from its
anchor state (every gradient, the anchor state's included, against the float64 reference, at
every offset and with a ragged end), gates at their extremes, and the activation memory the
forward pass keeps for the backward pass."""

from __future__ import annotations

import pytest
import torch

from mirasc import testing

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


def assert_matches_reference(module, case, anchor, offset: int) -> None:
    ref = continuing_run(module, case, anchor, offset, "reference")
    got = continuing_run(module, case, anchor, offset, "torch", strategy="chunked")
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
    return [torch.randn(B, H, i, o, generator=g, dtype=torch.float64) * i**-0.5 for i, o in shapes]


@pytest.mark.parametrize("name", ["titans", "ttt_mlp", "yaad", "moneta"])
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
