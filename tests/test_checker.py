"""Checker: names, arities, kinds and ranges; every mistake a located error with a useful hint."""

from __future__ import annotations

import pytest

from mirasc.errors import MirascError, SpecLimitError, SpecNameError, SpecTypeError
from mirasc.frontend.checker import load
from mirasc.ir.expr import unparse
from mirasc.ir.spec import ConstVal, GateRef


def memory(body: str, extra: str = "") -> str:
    return extra + "memory M {\n" + body + "\n}\n"


BASE = """    architecture = linear
    bias = l2
    retention = decay(alpha)
    algorithm = gd(lr: eta)
    gate eta = sigmoid(z)
    gate alpha = sigmoid(z)"""


def error(text: str, cls=MirascError) -> str:
    with pytest.raises(cls) as info:
        load(text, "m.miras")
    msg = str(info.value)
    assert msg.startswith("m.miras:"), msg
    return msg


def test_checked_spec():
    spec = load(memory(BASE), "m.miras")
    assert spec.retention.gate == GateRef("alpha")
    assert spec.algorithm.lr == GateRef("eta")
    assert spec.state_names == ("W",) and spec.chunk == 1
    assert unparse(spec.bias.body) == "0.5 * sum((y - v)^2)"


def test_normalised_text_round_trips():
    for text in (
        memory(BASE),
        memory(
            """    architecture = mlp(depth: 3, expansion: 2, activation: tanh, norm: layernorm)
    bias = yaad(delta: d)
    retention = lq(q: 3, keep: a)
    algorithm = gd(lr: 0.5)
    chunk = 4
    clip = 2
    gate a = sigmoid(z), init 0.999
    gate d = softplus(z) + 0.1, init 4.5"""
        ),
    ):
        spec = load(text, "m.miras")
        assert load(spec.text(), "n.miras") == spec


def test_kl_centred_flag():
    kl = BASE.replace("decay(alpha)", "kl(keep: alpha, centred: true)")
    spec = load(memory(kl), "m.miras")
    assert spec.retention.kind == "kl" and spec.retention.centred
    assert "kl(keep: alpha, centred: true)" in spec.text()
    assert load(spec.text(), "n.miras") == spec
    plain = load(memory(BASE.replace("decay(alpha)", "kl(alpha)")), "m.miras")
    assert not plain.retention.centred and "centred" not in plain.text()
    assert "centred must be true or false" in error(
        memory(kl.replace("centred: true", "centred: 1"))
    )
    assert "no parameter 'centred'" in error(
        memory(BASE.replace("decay(alpha)", "decay(alpha, centred: true)"))
    )


def test_gate_init_is_kept():
    spec = load(memory(BASE.replace("gate eta = sigmoid(z)", "gate eta = sigmoid(z), init 0.9")))
    assert [g.init for g in spec.gates] == [0.9, None]


@pytest.mark.parametrize("init", ["2", "-0.5", "0"])
def test_gate_init_out_of_the_formulas_range(init):
    msg = error(
        memory(BASE.replace("gate eta = sigmoid(z)", f"gate eta = sigmoid(z), init {init}"))
    )
    assert f"gate 'eta' cannot start at {init}" in msg and "[6.144e-06, 1]" in msg
    assert "m.miras:6:10" in msg


def test_gate_init_of_a_piecewise_formula():
    gate = "gate eta = piecewise(z < 0: 0.1, otherwise: 0.9)"
    assert (
        load(memory(BASE.replace("gate eta = sigmoid(z)", gate + ", init 0.9"))).gates[0].init
        == 0.9
    )
    assert "cannot start at 0.5" in error(
        memory(BASE.replace("gate eta = sigmoid(z)", gate + ", init 0.5"))
    )


def test_unknown_loss_suggests():
    msg = error(memory(BASE.replace("bias = l2", "bias = hubber(delta: 1)")), SpecNameError)
    assert "unknown loss 'hubber'" in msg and "did you mean 'huber'" in msg
    assert "m.miras:3:12" in msg and "^" in msg


def test_unknown_gate_in_algorithm():
    msg = error(memory(BASE.replace("gd(lr: eta)", "gd(lr: etta)")), SpecNameError)
    assert "did you mean 'eta'" in msg


def test_unknown_setting_and_parameter():
    assert "did you mean 'retention'" in error(memory(BASE + "\n    retension = none"))
    msg = error(memory(BASE.replace("linear", "mlp(dept: 2)")))
    assert "no parameter 'dept'" in msg and "did you mean 'depth'" in msg


def test_wrong_arity():
    msg = error(memory(BASE.replace("sigmoid(z)", "sigmoid(z, z)", 1)), SpecTypeError)
    assert "takes 1 argument(s), got 2" in msg
    msg = error(memory(BASE.replace("bias = l2", "bias(y, v) = huber(y; 1)")))
    assert "wrong number of arguments" in msg and "huber(y, v; delta)" in msg


def test_lp_below_one_is_rejected():
    msg = error(memory(BASE.replace("bias = l2", "bias = lp(p: 0.5)")), SpecTypeError)
    assert "p >= 1" in msg


def test_unused_gate():
    msg = error(memory(BASE + "\n    gate beta = sigmoid(z)"), SpecNameError)
    assert "gate 'beta' is declared but never used" in msg and "m.miras:8:10" in msg


def test_gate_must_depend_on_z():
    assert "does not depend" in error(
        memory(BASE.replace("gate eta = sigmoid(z)", "gate eta = 0.5"))
    )


def test_loss_without_y():
    msg = error(memory(BASE.replace("bias = l2", "bias(y, v) = sum(v^2)")), SpecTypeError)
    assert "does not depend on the prediction y" in msg


def test_vector_outside_sum_and_nested_sums():
    assert "inside sum" in error(memory(BASE.replace("bias = l2", "bias(y, v) = y")))
    assert "do not nest" in error(memory(BASE.replace("bias = l2", "bias(y, v) = sum(sum(y))")))


def test_recursion_is_reported():
    defs = "loss a(y, v) = b(y, v)\nloss b(y, v) = a(y, v)\n"
    msg = error(memory(BASE.replace("bias = l2", "bias = a"), defs), SpecTypeError)
    assert "recursive definition: a -> b -> a" in msg


def test_exponential_inlining_is_bounded():
    defs = "loss f0(y, v) = sum(y - v)\n" + "".join(
        f"loss f{i}(y, v) = f{i - 1}(y, v) + f{i - 1}(y, v)\n" for i in range(1, 40)
    )
    msg = error(memory(BASE.replace("bias = l2", "bias = f39"), defs), SpecLimitError)
    assert "nodes" in msg


def test_absurd_exponents_fail_fast():
    assert "too large" in error(memory(BASE.replace("bias = l2", "bias(y, v) = sum((y - v)^1000)")))


@pytest.mark.parametrize(
    "name", ["class", "lambda", "match", "_hidden", "__import__", "torch", "scale", "q"]
)
def test_unsafe_gate_names(name):
    msg = error(memory(BASE.replace("eta", name)), SpecNameError)
    assert repr(name) in msg


def test_duplicates_and_missing():
    assert "declared twice" in error(memory(BASE + "\n    gate eta = sigmoid(z)"))
    assert "given twice" in error(memory(BASE + "\n    bias = dot"))
    assert "has no algorithm" in error(memory(BASE.replace("algorithm = gd(lr: eta)", "")))


def test_combinations_outside_the_semantics():
    msg = error(
        memory(
            BASE.replace("gd(lr: eta)", "momentum(lr: eta, momentum: 0.9)").replace(
                "decay(alpha)", "l2(alpha)"
            )
        )
    )
    assert "momentum is defined with none or decay" in msg
    msg = error(
        memory(
            BASE.replace("gd(lr: eta)", "momentum(lr: eta, momentum: 0.9)").replace(
                "decay(alpha)", "decay(alpha, first: true)"
            )
        )
    )
    assert "first: true" in msg


def test_consts_are_substituted():
    spec = load(
        memory(
            BASE.replace("bias = l2", "bias(y, v; c) = sum(log(1 + ((y - v) / c)^2))")
            + "\n    const c = 2.0"
        ),
        "m.miras",
    )
    assert unparse(spec.bias.body) == "sum(log(1 + ((y - v) / 2)^2))"
    assert spec.algorithm.lr == GateRef("eta")
    assert load(memory(BASE.replace("gd(lr: eta)", "gd(lr: 0.25)").replace(
        "    gate eta = sigmoid(z)\n", "")), "m").algorithm.lr == ConstVal(0.25)  # fmt: skip


def test_broken_unused_definition_is_still_checked():
    msg = error(memory(BASE, "loss broken(y, v) = sum(y * w)\n"), SpecNameError)
    assert "unknown name 'w'" in msg


def test_one_memory_per_file():
    assert "exactly one memory" in error("loss f(y, v) = sum(y)\n")
