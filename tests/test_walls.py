"""The dependency walls between the stage packages, checked in fresh interpreters and on the
import statements themselves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILER_LIBS = {"sympy", "lark", "jinja2"}
COMPILER_STAGES = {"mirasc.frontend", "mirasc.derivation", "mirasc.codegen", "mirasc.compiler"}


def loaded_after(statement: str) -> set[str]:
    """Every module (full dotted names) a fresh interpreter holds after `statement`."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def stages(modules: set[str]) -> set[str]:
    return {".".join(m.split(".")[:2]) for m in modules if m.startswith("mirasc.")}


def test_front_end_imports_no_torch_and_no_sympy():
    mods = loaded_after(
        "from mirasc.frontend.checker import load; load(open('specs/titans.miras').read())"
    )
    assert not roots(mods) & {"torch", "triton", "sympy", "jinja2"}
    assert stages(mods) <= {"mirasc.frontend", "mirasc.ir", "mirasc.errors"}


def test_derivation_and_code_generation_import_no_torch():
    mods = loaded_after(
        "from mirasc.compiler.pipeline import build; build(open('specs/yaad.miras').read())"
    )
    assert not roots(mods) & {"torch", "triton"}


def test_explain_needs_no_torch():
    mods = loaded_after(
        "import contextlib, io\nfrom mirasc.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['explain', 'specs/yaad.miras'])"
    )
    assert not roots(mods) & {"torch", "triton"}


@pytest.mark.parametrize("package", ["mirasc.runtime", "mirasc.testing", "mirasc.training"])
def test_runtime_testing_and_training_import_no_compiler(package):
    mods = loaded_after(
        f"import {package}.{'trainer' if package.endswith('training') else ''}".rstrip(".")
    )
    assert not roots(mods) & COMPILER_LIBS, roots(mods) & COMPILER_LIBS
    assert not stages(mods) & COMPILER_STAGES, stages(mods) & COMPILER_STAGES


def imported_stages(package: str) -> set[str]:
    """The mirasc stage packages that any module of `package` imports, read from the source."""
    found = set()
    for path in (ROOT / "mirasc" / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = parts[: len(parts) - node.level]
                target = [*base, *(node.module.split(".") if node.module else [])]
                found.add(".".join(target[:2]))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mirasc"):
                found.add(".".join(node.module.split(".")[:2]))
    return found


def test_reference_shares_nothing_with_the_symbolic_path():
    assert not imported_stages("testing") & COMPILER_STAGES
    assert not imported_stages("runtime") & COMPILER_STAGES


def test_front_end_imports_no_later_stage():
    assert imported_stages("frontend") <= {"mirasc.frontend", "mirasc.ir", "mirasc.errors"}
    assert imported_stages("ir") <= {"mirasc.ir", "mirasc.errors"}


def test_trained_model_runs_with_runtime_only():
    mods = loaded_after(
        "import torch; from generated.titans import TitansLayer; TitansLayer(16, 2)(torch.randn(1, 3, 16))"
    )
    assert not roots(mods) & COMPILER_LIBS
    assert not stages(mods) & COMPILER_STAGES
