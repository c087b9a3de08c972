"""The Triton printer (the first piece of the Triton backend): golden strings, and every
derived bias gradient run as a Triton kernel under TRITON_INTERPRET=1 on CPU tensors against
autograd on the reference's direct evaluation of the formula."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import sympy as sp
import torch
import triton.language as tl
from test_symbolic import BIASES, spec_with

from mirasc.codegen.printing import TritonPrinter
from mirasc.derivation.symbolic import Softplus, X, derive_bias
from mirasc.runtime.triton_lib import stable_sinh, stable_tanh
from mirasc.testing.reference import evaluate

triton = pytest.importorskip("triton")


def test_golden_triton_printing():
    p = TritonPrinter()
    assert p.doprint(sp.tanh(X)) == "stable_tanh(x)" and p.helpers == {"stable_tanh"}
    assert p.doprint(Softplus(X)) == "(tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))"
    assert p.doprint(sp.sign(X)) == "tl.where((x) > 0, 1.0, tl.where((x) < 0, -1.0, 0.0))"
    assert p.doprint(X ** sp.Rational(3, 2)) == "tl.exp((1.5)*tl.log(x))"
    assert p.doprint(X**12) == "ipow(x, 12)" and p.helpers == {"stable_tanh", "ipow"}
    assert p.doprint(sp.Piecewise((X, X > 0), (0.5, True))) == "tl.where((x > 0.0), x, 0.5)"


KERNEL = """
import triton
import triton.language as tl

# the helpers generated kernels import
from mirasc.runtime.triton_lib import ipow, stable_sinh, stable_tanh


@triton.jit
def bias_grad_kernel(y_ptr, v_ptr, {param_ptrs}out_ptr, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < R) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]
    y = tl.load(y_ptr + offs, mask=mask, other=0.5).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.5).to(tl.float32)
{param_loads}
{elementwise}
{sums}
{token}
    tl.store(out_ptr + offs, {grad} + y * 0.0, mask=mask)
"""


def render_kernel(b, path):
    """A kernel computing dl/dy row-wise from the printed pieces."""
    p = TritonPrinter()
    names = [str(a) for a in b.params]
    ind = "    "
    elementwise = p.block(
        {
            **{f"_phi{i}": e for i, e in enumerate(b.phi)},
            **{f"_dphi{i}": e for i, e in enumerate(b.dphi)},
        },
        "_e",
    )
    source = KERNEL.format(
        param_ptrs="".join(f"{n}_ptr, " for n in names),
        param_loads="\n".join(
            f"{ind}{n} = tl.load({n}_ptr + rows, mask=rows < R, other=1.0).to(tl.float32)[:, None]"
            for n in names
        ),
        elementwise="\n".join(ind + line for line in elementwise),
        sums="\n".join(
            f"{ind}_S{i} = tl.sum(tl.where(mask, _phi{i}, 0.0), axis=1)[:, None]"
            for i in range(len(b.phi))
        ),
        token="\n".join(
            ind + line for line in p.block({f"_g{i}": g for i, g in enumerate(b.dg)}, "_s")
        ),
        grad=" + ".join(f"_g{i} * _dphi{i}" for i in range(len(b.phi))),
    )
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module.bias_grad_kernel, names


@pytest.mark.parametrize(
    "bias,extra", [*BIASES, ("bias(y, v) = sum((y - v)^12) + sum(cosh(y) * sinh(v))", "")]
)
def test_bias_gradients_run_as_triton_kernels(tmp_path, bias, extra):
    spec = spec_with(bias, extra)
    b = derive_bias(spec)
    kernel, names = render_kernel(b, tmp_path / f"kernel_{abs(hash(bias))}.py")
    torch.manual_seed(0)
    R, D = 7, 5  # odd sizes: masked rows and columns
    y = torch.randn(R, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(R, D, dtype=torch.float64)
    params = {n: torch.rand(R, 1, dtype=torch.float64) + 0.5 for n in names}
    loss = evaluate(spec.bias.body, {"y": y, "v": v, **params}, y)
    (want,) = torch.autograd.grad(loss.sum(), y)
    out = torch.full((R, D), float("nan"))  # NaN-filled: an unwritten element fails loudly
    args = [y.detach().float(), v.float(), *(params[n].flatten().float() for n in names), out]
    kernel[(2,)](*args, R, D, BLOCK_R=4, BLOCK_D=8)
    # fp32 kernel vs fp64 autograd: a few ulps of fp32 per operation
    err = ((out.double() - want).norm() / want.norm().clamp_min(1e-3)).item()
    assert err < 1e-5, err


@triton.jit
def _tanh_sinh_kernel(x_ptr, t_ptr, s_ptr, N, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + o, mask=o < N)
    tl.store(t_ptr + o, stable_tanh(x), mask=o < N)
    tl.store(s_ptr + o, stable_sinh(x), mask=o < N)


def test_tanh_and_sinh_are_accurate_at_every_size():
    """Near 0, 2 sigmoid(2x) - 1 and (exp(x) - exp(-x)) / 2 lose their leading digits in fp32
    (1e-4 relative error at x = 1e-3: 16% in a three-layer tanh memory's final state with a
    clip); the helpers the printer calls stay within a few ulps at every magnitude and sign."""
    mags = torch.tensor([1e-30, 1e-8, 1e-5, 1e-3, 0.05, 0.1249, 0.1251, 0.3, 0.4999, 0.5001, 1.0,
                         3.0, 9.0, 40.0], dtype=torch.float64)  # fmt: skip
    x64 = torch.cat([mags, -mags])
    x = x64.float()
    t, s = torch.empty_like(x), torch.empty_like(x)
    _tanh_sinh_kernel[(1,)](x, t, s, x.numel(), BLOCK=32)
    for got, want in ((t, torch.tanh(x.double())), (s, torch.sinh(x.double()))):
        rel = ((got.double() - want) / want).abs()
        assert rel.max() < 4e-7, rel


def test_an_unprintable_node_is_a_located_compile_error(monkeypatch):
    """A node a printer cannot print stops compilation with the node and the spec line."""
    from mirasc.compiler.pipeline import build
    from mirasc.errors import CodegenError

    kept = {f: name for f, name in TritonPrinter.functions.items() if f is not sp.erf}
    monkeypatch.setattr(TritonPrinter, "functions", kept)
    text = (
        "memory m {\n    architecture = linear\n    bias(y, v) = sum(erf(y - v) * (y - v))\n"
        "    retention = none\n    algorithm = gd(lr: eta)\n    gate eta = sigmoid(z)\n}\n"
    )
    with pytest.raises(CodegenError) as e:
        build(text, "m.miras")
    message = str(e.value)
    assert "m.miras:3:" in message and "cannot print erf" in message and "^" in message
