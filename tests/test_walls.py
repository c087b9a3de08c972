"""Design §9: the dependency walls, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_front_end_imports_no_torch():
    mods = loaded_after("from mirasc.checker import load; load(open('specs/titans.miras').read())")
    assert "torch" not in mods and "triton" not in mods and "sympy" not in mods


def test_explain_needs_no_torch():
    mods = loaded_after(
        "import contextlib, io\nfrom mirasc.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['explain', 'specs/yaad.miras'])"
    )
    assert "torch" not in mods and "triton" not in mods


@pytest.mark.parametrize("module", ["mirasc.reference", "mirasc.runtime", "mirasc.testing"])
def test_oracle_and_runtime_import_no_compiler(module):
    mods = loaded_after(f"import {module}")
    assert not mods & {"sympy", "lark", "jinja2"}, mods & {"sympy", "lark", "jinja2"}


def test_reference_shares_nothing_with_the_symbolic_path():
    import ast
    from pathlib import Path

    tree = ast.parse(Path("mirasc/reference.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"symbolic", "printing", "render", "compiler"}


def test_trained_model_runs_with_runtime_only():
    mods = loaded_after(
        "import torch; from generated.titans import TitansLayer; TitansLayer(16, 2)(torch.randn(1, 3, 16))"
    )
    assert not mods & {"sympy", "lark", "jinja2"}
