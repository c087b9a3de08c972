"""A bounded run of the fuzz harness (tools/fuzz.py): a few hundred generated and mutated specs
through parse and check, some through the full build, with no crash, hang, unlocated error or
package that fails to import. The long run is `python tools/fuzz.py --n 20000`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fuzz import mismatch_groups, run  # noqa: E402
from tools.fuzzing.generate import make_input, shipped_specs  # noqa: E402
from tools.fuzzing.minimize import minimize  # noqa: E402


def test_inputs_are_a_function_of_their_seed():
    corpus = shipped_specs()
    assert [make_input(s, corpus) for s in range(20)] == [make_input(s, corpus) for s in range(20)]


def test_the_minimizer_keeps_what_the_outcome_needs():
    text = (ROOT / "specs" / "titans.miras").read_text()
    small = minimize(text, lambda t: "momentum(" in t and "silu" in t)
    assert "momentum(" in small and "silu" in small and len(small) < len(text) // 5


def test_mismatches_are_counted_by_retention_and_algorithm():
    texts = [
        (ROOT / "specs" / name).read_text()
        for name in ("moneta.miras", "moneta.miras", "titans.miras", "deltanet.miras")
    ]
    lines = mismatch_groups([dict(text=t) for t in texts]).splitlines()
    assert lines[1].split() == ["2", "lq", "q=4,", "gd"], lines
    assert sorted(line.split(None, 1)[1] for line in lines[2:]) == ["decay, momentum", "none, gd"]


def test_a_bounded_fuzz_run_finds_no_defect():
    tally = run(n=300, seed=20261129, minutes=1.5, build_fraction=0.06, timeout=20, progress=False)
    assert tally.inputs("check") + tally.inputs("build") >= 150
    assert not tally.defects, (
        tally.table()
        + "\n"
        + "\n".join(f"{d['seed']}: {d['outcome']}\n{d['detail']}" for d in tally.defects[:3])
    )
    outcomes = {outcome for _, outcome in tally.counts}
    assert {"checked", "built"} <= outcomes  # the generator reaches every stage
