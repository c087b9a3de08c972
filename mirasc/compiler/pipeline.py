"""The pipeline in one place: spec text -> Spec (front end) -> Derived (SymPy) -> Plan ->
generated files, each stage a call with a typed result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..codegen.render import render
from ..derivation.budget import Budget
from ..derivation.plan import Plan, make_plan
from ..derivation.symbolic import Derived, derive
from ..errors import MirascError
from ..frontend.checker import load
from ..frontend.parser import decode
from ..frontend.source import read_spec
from ..ir.spec import Spec
from .package import write_package


@dataclass(frozen=True)
class Build:
    """Every stage's result for one spec: what `explain` prints and `compile` writes."""

    source_text: str
    spec: Spec
    derived: Derived
    plan: Plan
    files: dict[str, str]  # generated file name -> text


def build(data: bytes | str, file: str = "<spec>") -> Build:
    """Spec text through load -> derive -> plan -> render."""
    spec = load(data, file)
    text = decode(data, file)
    budget = Budget()
    derived = derive(spec, budget)
    where = spec.bias.body.span  # the memory's first formula: the spec has no span of its own
    with budget.stage("planning the kernels for this memory", where):
        plan = make_plan(spec, derived)
    with budget.stage("printing the code for this memory's formulas", where):
        files = render(spec, derived, plan, text)
    return Build(text, spec, derived, plan, files)


def compile_to(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Compile one spec file into `out_dir/<module_name>/`; returns the package folder."""
    data, name = read_spec(path)
    result = build(data, name)
    target = Path(out_dir) / result.spec.module_name
    try:
        write_package(result.files, target)
    except OSError as e:  # a read-only or full disk, a file where the folder should be
        raise MirascError(f"cannot write {target}: {e.strerror or e}") from None
    return target
