"""mirasc.compile: cached on disk, keyed by spec text and compiler, safe under concurrency."""

from __future__ import annotations

import subprocess
import sys
import time

import mirasc

SPEC = """memory cached {
    architecture = linear
    bias = l2
    retention = none
    algorithm = gd(lr: eta)
    gate eta = sigmoid(z)
}
"""


def test_second_compile_is_cached(tmp_path):
    spec = tmp_path / "c.miras"
    spec.write_text(SPEC)
    start = time.perf_counter()
    first = mirasc.compile(spec, cache_dir=tmp_path / "cache")
    cold = time.perf_counter() - start
    entries = list((tmp_path / "cache").iterdir())
    start = time.perf_counter()
    again = mirasc.compile(spec, cache_dir=tmp_path / "cache")
    warm = time.perf_counter() - start
    assert again is first and list((tmp_path / "cache").iterdir()) == entries
    assert warm < cold


def test_changed_text_gets_a_new_entry(tmp_path):
    a, b = tmp_path / "a.miras", tmp_path / "b.miras"
    a.write_text(SPEC)
    b.write_text(SPEC.replace("sigmoid(z)", "0.5 * sigmoid(z)"))
    mirasc.compile(a, cache_dir=tmp_path / "cache")
    mirasc.compile(b, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/*/__init__.py"))) == 2


def test_concurrent_compiles_agree(tmp_path):
    spec = tmp_path / "c.miras"
    spec.write_text(SPEC)
    code = (
        "import mirasc, sys; m = mirasc.compile(sys.argv[1], cache_dir=sys.argv[2]); "
        "print(m.SPEC.splitlines()[1])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(spec), str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert {o[0] for o in outs} == {"memory cached {\n"}
    assert len(list((tmp_path / "cache").glob("*/*/__init__.py"))) == 1


def test_cache_hit_imports_no_compiler(tmp_path):
    spec = tmp_path / "c.miras"
    spec.write_text(SPEC)
    mirasc.compile(spec, cache_dir=tmp_path / "cache")
    code = (
        "import sys, mirasc; mirasc.compile(sys.argv[1], cache_dir=sys.argv[2]); "
        "print(sorted({'sympy', 'lark', 'jinja2'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(spec), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
