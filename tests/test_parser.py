"""Parser: well-formed text parses; every malformed input is a located MirascError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirasc.errors import MirascError, SpecLimitError, SpecSyntaxError
from mirasc.frontend.checker import load
from mirasc.frontend.parser import parse
from mirasc.ir.expr import Binary, Call, Neg, Num, unparse

GOOD = """
# comment
memory Titans {
    architecture = mlp(depth: 2, expansion: 4, activation: silu, residual: true)
    bias         = l2
    retention    = decay(alpha)
    algorithm    = momentum(lr: theta, momentum: eta)
    chunk        = 16
    gate theta = 0.1 * sigmoid(z)
    gate eta   = sigmoid(z)
    gate alpha = sigmoid(z)
}
"""


def test_parses_design_example():
    module = parse(GOOD, "t.miras")
    (mem,) = module.memories
    assert mem.name == "Titans"
    names = [getattr(m, "name", None) for m in mem.members]
    assert names[:5] == ["architecture", "bias", "retention", "algorithm", "chunk"]


def test_gate_init():
    text = GOOD.replace("gate eta   = sigmoid(z)", "gate eta = sigmoid(z), init -0.5")
    gates = [m for m in parse(text, "t.miras").memories[0].members if hasattr(m, "init")]
    assert [g.init for g in gates] == [None, -0.5, None]


def test_init_is_still_a_name():
    text = GOOD.replace("theta", "init").replace(
        "gate eta   = sigmoid(z)", "gate eta = sigmoid(z), init 0.5"
    )
    assert [g.name for g in load(text, "t.miras").gates] == ["init", "eta", "alpha"]


def test_gate_init_needs_a_number():
    e = _error(
        GOOD.replace("gate eta   = sigmoid(z)", "gate eta = sigmoid(z), init"), SpecSyntaxError
    )
    assert "bad.miras:11:5" in str(e) and "a number" in str(e)


def test_precedence_and_associativity():
    body = parse("loss f(y, v) = -a^b^c * 2 + 3", "x").functions[0].body
    # (-(a^(b^c)) * 2) + 3
    assert isinstance(body, Binary) and body.op == "+"
    mul = body.left
    assert mul.op == "*" and isinstance(mul.left, Neg)
    power = mul.left.operand
    assert power.op == "^" and power.right.op == "^"
    assert unparse(body) == "-a^b^c * 2 + 3"


def test_call_with_parameters():
    body = parse("loss f(y, v) = huber(y, v; 1.5)", "x").functions[0].body
    assert body == Call("huber", (body.args[0], body.args[1]), (Num(1.5),))


def _error(text: str, cls=MirascError) -> MirascError:
    with pytest.raises(cls) as info:
        load(text, "bad.miras")
    return info.value


def test_syntax_error_is_located_with_caret():
    e = _error("memory M {\n    bias = = l2\n}\n", SpecSyntaxError)
    msg = str(e)
    assert msg.startswith("bad.miras:2:12: error: unexpected '='")
    assert "    bias = = l2\n" in msg and "           ^" in msg
    assert "expected" in msg


def test_unexpected_end_of_file():
    e = _error("memory M {\n  bias = l2\n", SpecSyntaxError)
    assert "unexpected end of file" in str(e) and "'}'" in str(e)


def test_binary_junk_is_rejected_with_a_position():
    e = _error(b"memory M {\xff\xfe\x00}", SpecSyntaxError)
    assert "not UTF-8" in str(e) and "bad.miras:1:11" in str(e)


def test_control_characters():
    e = _error("memory M {\x00}", SpecSyntaxError)
    assert "U+0000" in str(e)


@pytest.mark.parametrize("depth", [200, 3000])
def test_deep_nesting_fails_fast(depth):
    text = "loss f(y, v) = sum(" + "exp(" * depth + "y" + ")" * (depth + 1)
    e = _error(text, SpecLimitError)
    assert "nested" in str(e) and "bad.miras:1:" in str(e)


def test_redundant_parentheses_are_harmless():
    module = parse("loss f(y, v) = sum(" + "(" * 3000 + "y" + ")" * 3000 + ")", "x")
    assert unparse(module.functions[0].body) == "sum(y)"


def test_long_flat_chain_fails_fast():
    e = _error("loss f(y, v) = " + " + ".join(["y"] * 3000), SpecLimitError)
    assert "nested" in str(e)


@pytest.mark.parametrize("number", ["1e999999", "1e31", "9" * 5000])
def test_absurd_literals(number):
    e = _error(f"loss f(y, v) = sum(y * {number})", SpecLimitError)
    assert "out of range" in str(e)


def test_oversized_file():
    e = _error("#" * 300_000, SpecLimitError)
    assert "limit" in str(e)


SPEC_ALPHABET = st.sampled_from(
    [
        *list("memory{}()=,;:+-*/^<>#\n \t0123456789.eE_abcyvz"),
        "memory",
        "gate",
        "init",
        "const",
        "loss",
        "bias",
        "sum",
        "piecewise",
        "otherwise",
        "l2",
        "\x00",
    ]
)


@given(st.lists(SPEC_ALPHABET, max_size=60).map("".join))
def test_fuzz_token_soup_raises_only_mirasc_errors(text):
    try:
        load(text, "fuzz.miras")
    except MirascError as e:
        assert "fuzz.miras" in str(e) or e.span is None
        assert "Traceback" not in str(e)


@given(st.binary(max_size=200))
def test_fuzz_bytes_raise_only_mirasc_errors(data):
    with contextlib.suppress(MirascError):
        load(data, "fuzz.miras")


@given(st.text(max_size=120))
def test_fuzz_unicode_raises_only_mirasc_errors(text):
    with contextlib.suppress(MirascError):
        load("memory M {\n" + text + "\n}", "fuzz.miras")
