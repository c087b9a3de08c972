"""Spec text never reaches eval/exec/sympify, nor generated code unchecked."""

from __future__ import annotations

import builtins

import pytest
import sympy

from mirasc.codegen.safety import Code, safe_value
from mirasc.compiler.pipeline import build
from mirasc.errors import CodegenError, MirascError
from mirasc.frontend.checker import load

BASE = """memory M {{
    architecture = linear
    bias = {bias}
    retention = none
    algorithm = gd(lr: {lr})
    {gates}
}}
"""


def test_compile_never_calls_eval_exec_or_sympify(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("forbidden call during compilation")

    text = BASE.format(
        bias="yaad(delta: d)", lr="eta", gates="gate eta = sigmoid(z)\n gate d = softplus(z)"
    )
    build(text, "x.miras")  # warm up: SymPy's lazy imports and Jinja's template compile use exec
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", forbidden, raising=False)
    build(text, "x.miras")


@pytest.mark.parametrize(
    "attack",
    [
        'bias = l2 """; import os',
        "bias = l2\n    gate __class__ = sigmoid(z)",
        "bias(y, v) = sum(__import__(y))",
        "bias(y, v) = sum(y.__class__)",
        "bias = l2\n    gate os = sigmoid(z); import os",
        "bias(y, v) = sum(eval(y))",
        "bias = l2\n    gate print = exec(z)",
    ],
)
def test_injection_attempts_are_errors(attack):
    text = f"memory M {{\n    architecture = linear\n    {attack}\n    retention = none\n    algorithm = gd(lr: 0.1)\n}}"
    with pytest.raises(MirascError):
        build(text, "x.miras")


def test_hostile_file_name_cannot_break_out_of_comments():
    text = BASE.format(bias="l2", lr="0.5", gates="")
    files = build(text, 'evil"""\nimport os\n#.miras').files
    for code in files.values():
        compile(code, "generated", "exec")  # still valid Python
        assert "\nimport os" not in code


def test_templates_refuse_unchecked_strings():
    assert safe_value("valid_name") == "valid_name"
    assert safe_value(Code("x + 1")) == "x + 1"
    assert safe_value(3) == "3"
    for bad in ("a b", "os.system('x')", "1; import os", ""):
        with pytest.raises(CodegenError):
            safe_value(bad)


def test_names_are_python_safe():
    for name in ("def", "None", "_x", "STATE_NAMES"):
        with pytest.raises(MirascError):
            load(BASE.format(bias="l2", lr=name, gates=f"gate {name} = sigmoid(z)"), "x")
