"""A non-editable install works: the wheel ships every subpackage, the grammar, prelude, corpus
and the top-level templates/ (mapped into mirasc/templates), and compiles a spec from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed copy only
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_a_built_wheel_installs_and_compiles_a_spec(tmp_path):
    source = tmp_path / "source"  # build from a copy: no build/ or egg-info in the checkout
    tracked = run("git", "ls-files", cwd=ROOT).split()
    for name in tracked:
        if name.startswith(("mirasc/", "templates/")) or name in ("pyproject.toml", "README.md"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(wheels), str(source), cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("mirasc-*.whl")
    env = tmp_path / "venv"  # torch, sympy, ... come from this interpreter's site-packages
    venv.create(env, system_site_packages=True, with_pip=False)
    python = str(env / "bin" / "python")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        str(wheel), cwd=tmp_path)  # fmt: skip
    where = run(
        python, "-c",
        "import mirasc, mirasc.codegen.template_dir as t; print(mirasc.__file__); print(t.template_dir())",
        cwd=tmp_path,
    ).split()  # fmt: skip
    assert all(str(env) in w for w in where), where
    run(python, "-m", "mirasc", "compile", str(ROOT / "specs" / "titans.miras"), "-o", "out",
        cwd=tmp_path)  # fmt: skip
    files = {p.name for p in (tmp_path / "out" / "titans").iterdir()}
    assert {"__init__.py", "ops.py", "layer.py", "torch_backend.py", "triton_backend.py"} <= files
    run(
        python, "-c", "from mirasc.training import data; assert data.CORPUS.is_file()", cwd=tmp_path
    )
