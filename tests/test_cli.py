"""The command line: help, compile, explain, check, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirasc.cli import main


def run(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mirasc", *args], capture_output=True, text=True, **kw
    )


@pytest.mark.parametrize("cmd", [[], ["compile"], ["explain"], ["check"]])
def test_help(cmd):
    out = run(*cmd, "--help")
    assert out.returncode == 0 and "usage: mirasc" in out.stdout


def test_compile_and_import(tmp_path):
    assert main(["compile", "specs/yaad.miras", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "yaad" / "__init__.py").exists()


def test_explain_shows_rule_and_code(capsys):
    assert main(["explain", "specs/titans.miras"]) == 0
    out = capsys.readouterr().out
    assert "S_t = eta_t S_(t-1) - theta_t g_t" in out and "def bias_grad" in out


def test_explain_states_memoras_mirror_step_on_every_token(capsys):
    assert main(["explain", "specs/memora.miras"]) == 0
    out = capsys.readouterr().out
    assert "W_t = softmax_row(a_t log W_(t-1) - eta_t g_t) (the mirror step, on every token" in out
    assert "first token" not in out


@pytest.mark.parametrize(("spec", "split"), [("gated_deltanet", True), ("titans", False)])
def test_explain_states_whether_the_recurrent_kernels_split_value_columns(capsys, spec, split):
    assert main(["explain", f"specs/{spec}.miras"]) == 0
    out = capsys.readouterr().out
    assert ("(batch, head) and tile of value columns" in out) is split


def test_check_passes_on_a_shipped_spec(capsys):
    assert main(["check", "specs/gated_deltanet.miras", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "grad:gate:alpha" in out and "ok: 0 tensor(s) over tolerance" in out
    assert "fp32 with targets x 100 (residuals of hundreds): finite\n" in out


@pytest.mark.parametrize(
    "loss,verdict",
    [
        ("log(sum(exp(y - v)))", "where float64 is: the loss's value or derivatives overflow"),
        ("sum(exp(y - v) - (y - v))", "in float64 too: the update itself diverges"),
    ],
)
def test_check_warns_where_a_loss_breaks_on_outliers(tmp_path, capsys, loss, verdict):
    """A log-sum-exp's sum overflows fp32 at residuals of hundreds (its float64 run is finite);
    an exponential loss's update diverges in both. A warning: the check itself still passes."""
    spec = tmp_path / "outliers.miras"
    spec.write_text(
        f"memory outliers {{\n    architecture = linear\n    bias(y, v) = {loss}\n"
        "    retention = decay(alpha)\n    algorithm = gd(lr: eta)\n"
        "    gate eta = 0.1 * sigmoid(z)\n    gate alpha = sigmoid(z)\n}\n"
    )
    assert main(["check", str(spec), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "(residuals of hundreds): not finite in o, state:W" in out and verdict in out


def test_check_holds_the_triton_kernels_too(capsys):
    """The recurrent kernels, and (every other case at least 64 tokens) the chunked ones."""
    assert main(["check", "specs/linear_attention.miras", "-n", "4", "--backend", "triton"]) == 0
    out = capsys.readouterr().out
    assert "the Triton kernels" in out and "float32" in out and "ok: 0 tensor(s)" in out
    assert ">= 64 tokens (chunked kernels), every fourth at Dk = Dv = 16" in out
    assert "'T': 6" in out and "'Dk': 16, 'Dv': 16}" in out


def test_check_reaches_the_chunked_kernels_of_every_shipped_spec(shipped):
    """Every shipped spec has chunked Triton kernels (WY, dual form, MLP, kl), and `check`
    knows from which length each runs them (MEMORA's kl kernels were missed: its long cases
    never came)."""
    from mirasc.testing.spec_check import chunked_tokens

    assert {name: chunked_tokens(module) for name, module in shipped.items()} == {
        name: 64 for name in shipped
    }


def test_check_allows_more_only_where_the_case_itself_is_ill_conditioned():
    """`allowances`: nothing to measure when every error is within tolerance; a wrong answer on
    a well-conditioned case keeps its tolerance (the exact answer barely moves at half an ulp),
    so it still fails; a LayerNorm over three nearly equal values is allowed more in fp32."""
    import torch

    from mirasc import compile as compile_spec
    from mirasc import testing
    from mirasc.testing.spec_check import allowances

    module = compile_spec("specs/titans.miras")
    spec = testing.spec_of(module)
    calm = testing.make_case(spec, B=1, T=20, H=1, Dk=8, seed=3, dtype=torch.float64)
    assert allowances(module, calm, [({"o": 1e-4}, "")], 2e-3, "float32") == {}
    allowed = allowances(module, calm, [({"o": 0.5}, "")], 2e-3, "float32")
    assert max(allowed.values()) == 2e-3  # the exact answer moves by 3e-7 here
    assert max(allowances(module, calm, [({"o": 0.5}, "")], 1e-9, "float64").values()) < 1e-6
    ill = testing.make_case(spec, B=2, T=79, H=1, Dk=3, seed=5, dtype=torch.float64)
    assert max(allowances(module, ill, [({"o": 0.5}, "")], 2e-3, "float32").values()) > 2e-2


@pytest.mark.parametrize(
    "text,message",
    [
        ("memory M {", "unexpected end of file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        ("memory M { bias = l2 }", "has no architecture"),
    ],
)
def test_errors_exit_1_without_traceback(tmp_path, text, message):
    spec = tmp_path / "bad.miras"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    for cmd in ("compile", "explain", "check"):
        out = run(cmd, str(spec), *(["-o", str(tmp_path / "o")] if cmd == "compile" else []))
        assert out.returncode == 1, out.stderr
        assert message in out.stderr and "bad.miras:" in out.stderr
        assert "Traceback" not in out.stderr


def test_missing_file():
    out = run("compile", "nope.miras")
    assert out.returncode == 1 and "cannot read nope.miras" in out.stderr
