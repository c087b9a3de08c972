"""Derivation and printers: golden strings, the whitelist, and every derived piece (first and
second order) against torch autograd on the reference's direct evaluation of the formula."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from mirasc.codegen.printing import TorchPrinter
from mirasc.derivation.symbolic import Sigmoid, Softplus, V, X, Y, derive, derive_bias, symbol
from mirasc.errors import CodegenError, SpecLimitError, SpecTypeError
from mirasc.frontend.checker import load
from mirasc.testing.reference import evaluate


def spec_with(bias: str, extra: str = "", act: str = "silu"):
    return load(
        f"""memory M {{
    architecture = mlp(depth: 2, activation: {act})
    {bias}
    retention = none
    algorithm = gd(lr: 0.1)
    {extra}
}}""",
        "m.miras",
    )


def test_l2_pieces():
    b = derive_bias(spec_with("bias = l2"))
    S0 = symbol("_S0")
    assert b.g == S0 / 2 and b.phi == ((Y - V) ** 2,)
    assert sp.simplify(b.grad() - (Y - V)) == 0
    assert b.d2phi == (2,) and b.d2g == (0,)


def test_yaad_is_one_switch_per_token():
    b = derive_bias(spec_with("bias = yaad(delta: d)", "gate d = softplus(z)"))
    assert len(b.phi) == 2 and b.params == (symbol("d"),)
    assert all(isinstance(g, sp.Piecewise) for g in b.dg)


def test_golden_torch_printing():
    p = TorchPrinter(like="y")
    assert p.doprint((Y - V) ** 3) == "((-v + y)*(-v + y)*(-v + y))"
    assert p.doprint(Y**-2) == "1.0/(y*y)"
    assert p.doprint(X / (Y**2 + 1) ** 2) == "x/(((y*y) + 1.0)*((y*y) + 1.0))"
    assert p.doprint(sp.sqrt(Y)) == "torch.sqrt(y)"
    assert p.doprint(Y ** sp.Rational(3, 2)) == "torch.pow(y, 1.5)"
    assert p.doprint(Y**20) == "torch.pow(y, 20.0)"
    assert p.doprint(Sigmoid(X) + Softplus(X)) == (
        "torch.sigmoid(x) + torch.nn.functional.softplus(x)"
    )
    pw = sp.Piecewise((Y, sp.Abs(Y) <= 1), (0.5, True))
    assert p.doprint(pw) == "torch.where((torch.abs(y) <= 1.0), y, y.new_tensor(0.5))"
    assert p.doprint(sp.sqrt(2) * Y) == "1.4142135623730951*y"


def test_cse_block():
    lines = TorchPrinter(like="y").block({"_a": sp.exp(Y - V) + 1, "_b": sp.exp(Y - V) * 2}, "_t")
    assert lines == ["_t0 = torch.exp(-v + y)", "_a = _t0 + 1.0", "_b = 2.0*_t0"]


def test_printer_whitelist():
    with pytest.raises(CodegenError, match="cannot print"):
        TorchPrinter().doprint(sp.gamma(X))
    with pytest.raises(CodegenError, match="not a real number"):
        TorchPrinter().doprint(sp.I * X)


def test_constant_folding_guards():
    with pytest.raises(SpecLimitError):
        derive(spec_with("bias(y, v) = sum((y - v)^2 * exp(exp(exp(10))))"))
    with pytest.raises(SpecLimitError):
        derive(spec_with("bias(y, v) = sum(y * (10^60)^60)"))
    with pytest.raises(SpecTypeError, match="division by zero"):
        derive(spec_with("bias(y, v) = sum(y / (1 - 1))"))


BIASES = [
    ("bias = l2", ""),
    ("bias = dot", ""),
    ("bias = lp(p: 3)", ""),
    ("bias = lp(p: p)", "gate p = 1.5 + sigmoid(z)"),
    ("bias = huber(delta: d)", "gate d = softplus(z)"),
    ("bias = yaad(delta: d)", "gate d = softplus(z)"),
    ("bias(y, v; c) = sum(log(1 + ((y - v) / c)^2))", "const c = 2"),
    ("bias(y, v) = log(sum(exp(y - v))) + 0.1 * sum(smooth_abs(y; 0.01))", ""),
    ("bias(y, v) = sqrt(sum((y - v)^2) + 1) * sum(tanh(y) * v)", ""),
    ("bias(y, v) = sqrt(sum(log(cosh(y - v))) + 1) + sum(sinh(y)^2 / cosh(y)^3)", ""),
    ("bias(y, v) = sum(log(1 + exp(y - v))) + sum(v / (1 + exp(-y)))", ""),
]


def _run_printed(lines: list[str], env: dict, out: str):
    """Evaluate mirasc's own printed code (test-only) in a namespace with torch."""
    ns = {"torch": torch, **env}
    exec("\n".join(lines), ns)
    return ns[out]


@pytest.mark.parametrize("bias,extra", BIASES)
def test_every_bias_piece_matches_autograd(bias, extra):
    spec = spec_with(bias, extra)
    b = derive_bias(spec)
    torch.manual_seed(0)
    n, D = 5, 4
    y = torch.randn(n, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, D, dtype=torch.float64)
    params = {p.name: (torch.rand(n, 1, dtype=torch.float64) + 0.5) for p in b.params}
    for p in params.values():
        p.requires_grad_(True)
    loss = evaluate(spec.bias.body, {"y": y, "v": v, **params}, y)  # the oracle's evaluation
    (dl_dy,) = torch.autograd.grad(loss.sum(), y, create_graph=True)
    printer = TorchPrinter(like="y")
    env = {"y": y, "v": v, **params}
    sums = {f"_S{i}": _run_printed(printer.block({"o": phi}, "_t"), env, "o").sum(-1, keepdim=True)
            for i, phi in enumerate(b.values)}  # fmt: skip
    env.update(sums)
    grad = _run_printed(printer.block({"o": b.grad()}, "_t"), env, "o")
    assert torch.allclose(grad + 0 * y, dl_dy, atol=1e-12)
    # second order: the Hessian-vector product of l in y, from the derived pieces
    u = torch.randn(n, D, dtype=torch.float64)
    hvp = torch.zeros_like(y)
    if dl_dy.requires_grad:  # a loss linear in y (dot) has a zero Hessian
        (hvp,) = torch.autograd.grad((dl_dy * u).sum(), y, retain_graph=True, allow_unused=True)
        hvp = torch.zeros_like(y) if hvp is None else hvp
    m = len(b.phi)
    ev = lambda e: _run_printed(printer.block({"o": e}, "_t"), env, "o") + 0 * y  # noqa: E731
    dphi = [ev(e) for e in b.dphi]
    mine = sum(ev(b.dg[i]) * ev(b.d2phi[i]) * u for i in range(m))
    for i in range(m):
        for j in range(m):
            mine = mine + ev(b.d2g[i * m + j]) * dphi[i] * (dphi[j] * u).sum(-1, keepdim=True)
    assert torch.allclose(mine, hvp, atol=1e-10)
    # mixed pieces: d(dl/dy)/dparam for every gate the loss takes
    for k, p in enumerate(b.params):
        (dp,) = torch.autograd.grad((dl_dy * u).sum(), params[p.name], retain_graph=True)
        mine_p = sum(
            (ev(b.dg_dparam[i][k]) * dphi[i] + ev(b.dg[i]) * ev(b.dphi_dparam[i][k])) * u
            for i in range(m)
        ).sum(-1, keepdim=True)
        assert torch.allclose(mine_p, dp, atol=1e-10)


def test_hyperbolic_pieces_take_forms_fp32_evaluates():
    """log(cosh(r))'s pieces as differentiated are sinh/cosh (inf/inf in fp32 past |r| = 89)
    and 1 - sinh^2/cosh^2 (cancels to nothing past |r| = 8): they are written tanh(r) and
    1/cosh(r)^2, and the loss's value without a cosh that overflows."""
    b = derive_bias(spec_with("bias(y, v) = sqrt(sum(log(cosh(y - v))) + 1)"))
    r = V - Y
    assert b.dphi[0] == -sp.tanh(r) and b.d2phi[0] == sp.cosh(r) ** -2
    assert not b.values[0].has(sp.cosh)
    for x in (0.3, -2.0, 40.0):
        at = {Y: x, V: 0}
        assert abs(float(b.values[0].subs(at)) - float(b.phi[0].subs(at))) < 1e-12
    assert derive(spec_with("bias = l2", act="tanh")).activation.df == sp.cosh(X) ** -2


def test_a_softplus_or_sigmoid_written_out_is_kept_whole():
    """log(1 + exp(u)) and a / (1 + exp(u)) overflow fp32 past u = 88, in value and
    derivatives: they are built as the named functions, which print stably."""
    b = derive_bias(spec_with("bias(y, v) = sum(log(1 + exp(y - v)) + v / (1 + exp(-y)))"))
    assert b.phi[0] == Softplus(Y - V) + V * Sigmoid(Y)
    b = derive_bias(spec_with("bias(y, v) = sum(exp(y) / (1 + exp(y)) * v)"))
    assert b.phi[0] == Sigmoid(Y) * V
    b = derive_bias(spec_with("bias(y, v) = sum(log(2 + exp(y - v)))"))  # not a softplus
    assert b.phi[0] == sp.log(2 + sp.exp(Y - V))


@pytest.mark.parametrize("act", ["silu", "gelu", "tanh", "sigmoid", "relu", "identity"])
def test_activation_pieces_match_autograd(act):
    d = derive(spec_with("bias = l2", act=act)).activation
    x = torch.linspace(-3, 3, 41, dtype=torch.float64).requires_grad_(True)
    spec = spec_with("bias = l2", act=act)
    f = evaluate(spec.architecture.activation.body, {"x": x}, x)
    (df,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    d2f = torch.autograd.grad(df.sum(), x, allow_unused=True)[0] if df.requires_grad else None
    d2f = torch.zeros_like(x) if d2f is None else d2f
    p = TorchPrinter(like="x")
    run = lambda e: _run_printed(p.block({"o": e}, "_t"), {"x": x}, "o") + 0 * x  # noqa: E731
    assert torch.allclose(run(d.f), f, atol=1e-12)
    assert torch.allclose(run(d.df), df, atol=1e-12)
    assert torch.allclose(run(d.d2f), d2f, atol=1e-10)
