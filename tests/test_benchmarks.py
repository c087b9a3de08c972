"""The benchmark scripts at toy sizes: `recall_table.py` writes its tables and plots, stores every
run and trains on a rerun only what is not stored; `memorize.py` reports how much one pass of
writes memorizes; `simplex_read.py` compares the ways of reading a simplex memory; the
titans-pytorch reference stays an optional, outside dependency."""

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recall_table(monkeypatch):
    """The script as a module, on sys.path so that its worker processes can import it too."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("recall_table")


def test_memorize_reports_the_recall_error_after_one_pass(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    memorize = importlib.import_module("memorize")
    specs = [str(ROOT / f"specs/{name}.miras") for name in ("deltanet", "linear_attention")]
    memorize.main([*specs, "--head-dim", "8", "--batch", "4"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| deltanet")]
    at_start, at_max, gates = rows[0].split("|")[2:5]
    assert 0.0 < float(at_start) < 1.0 and 0.0 < float(at_max) < 1.0  # it memorizes something
    assert "beta" in gates


def test_learning_diagnosis_reports_yaads_switch_and_gradients(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    diagnosis = importlib.import_module("learning_diagnosis")
    diagnosis.main([str(ROOT / "specs/yaad.miras"), "--seq-len", "32"])
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| yaad"))
    grads, _, branch = row.split("|")[2:5]
    assert "(100% l2)" in branch  # delta starts above the residual: the l2 branch
    assert float(grads.split("v ")[1].split(",")[0]) > 0  # so v gets a gradient


def test_learning_diagnosis_shows_monetas_normaliser_reversing_the_step(monkeypatch, capsys):
    """Under lq with q = 4 the first chunk's writes shrink the read weights where the same step
    taken on W grows them; without the normaliser (ttt_mlp) the two agree."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    diagnosis = importlib.import_module("learning_diagnosis")
    specs = [str(ROOT / "specs" / f"{n}.miras") for n in ("moneta", "ttt_mlp")]
    diagnosis.main([*specs, "--seq-len", "32", "--steps"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][2:]
    radial = {}
    for row in rows:
        pairs = row.strip().strip("|").split("|")[-1].split(",")
        radial[row.split("|")[1].strip()] = [tuple(map(float, p.split("/"))) for p in pairs]
    (plain1, read1), (plain2, read2) = radial["moneta"]
    assert plain1 > 1.0 > read1 and plain2 > 1.0 > read2
    assert all(abs(p - r) < 1e-6 for p, r in radial["ttt_mlp"])


def sweep(recall_table, out: Path, steps: int, *extra: str) -> None:
    """A toy sweep of out/deltanet.miras (copied from specs/ on first use) and attention."""
    spec = out / "deltanet.miras"
    if not spec.exists():
        out.mkdir(parents=True, exist_ok=True)
        spec.write_text((ROOT / "specs/deltanet.miras").read_text())
    recall_table.main(
        ["--specs", str(spec), "--baseline-layers", "1",
         "--lengths", "16", "--seeds", "0", "--steps", str(steps), "--batch", "2",
         "--pairs", "2", "--vocab", "16", "--hidden", "16", "--niah-lengths", "64",
         "--niah-best", "1", "--out", str(out), *extra]
    )  # fmt: skip


def test_a_sweep_reports_and_resumes(recall_table, tmp_path, capsys):
    sweep(recall_table, tmp_path, 2)
    first = capsys.readouterr().out
    assert "0 of 2 runs stored; training 2" in first
    table = (tmp_path / "table.md").read_text()
    for row in ("| deltanet |", "| attention (1 layer) |", "S-NIAH"):
        assert row in table
    assert (tmp_path / "mqar.png").exists() and (tmp_path / "niah.png").exists()
    stored = json.loads((tmp_path / "mqar_deltanet_16_0/result.json").read_text())
    assert 0.0 <= stored["accuracy"] <= 1.0 and stored["config"]["steps"] == 2

    sweep(recall_table, tmp_path, 2)
    assert "2 of 2 runs stored; training 0" in capsys.readouterr().out
    assert (tmp_path / "table.md").read_text() == table

    sweep(recall_table, tmp_path, 3, "--no-train")  # another budget: nothing stored fits it
    out = capsys.readouterr().out
    assert "0 of 2 runs stored; training 0" in out and "| deltanet | not run |" in out

    spec = tmp_path / "deltanet.miras"  # the spec's text changed: its run is stale
    spec.write_text(spec.read_text() + "# edited\n")
    sweep(recall_table, tmp_path, 2, "--no-train")
    out = capsys.readouterr().out
    assert "1 of 2 runs stored; training 0" in out and "| deltanet | not run |" in out


def test_no_lengths_runs_s_niah_alone_for_the_models_given(recall_table, tmp_path, capsys):
    """`--lengths` with no value trains no MQAR run and S-NIAH for every model given, and its
    runs are the ones a full sweep stores (the same folder and configuration)."""
    sweep(recall_table, tmp_path, 2, "--lengths")  # deltanet and attention, --niah-best 1
    out = capsys.readouterr().out
    assert "0 of 0 runs stored" in out and "0 of 2 runs stored; training 2" in out
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("S-NIAH") and "the models given" in table and "MQAR" not in table
    assert not (tmp_path / "mqar.png").exists() and (tmp_path / "niah.png").exists()

    sweep(recall_table, tmp_path, 2, "--baseline-layers")  # MQAR trained, S-NIAH found stored
    assert "1 of 1 runs stored; training 0" in capsys.readouterr().out


def test_simplex_read_shows_the_centred_read_memorizes(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    simplex_read = importlib.import_module("simplex_read")
    simplex_read.main(["--dim", "32", "--pairs", "4", "--batch", "2"])
    rows = {
        r.split("|")[1].strip(): r.split("|")[5:-1] for r in capsys.readouterr().out.splitlines()
    }
    best = {name: min(map(float, rows[name])) for name in ("plain", "centred")}
    assert best["centred"] < best["plain"]  # the plain read barely depends on its input


def test_titans_pytorch_reference_without_the_package_says_how_to_install_it():
    """titans-pytorch is a benchmark-only extra: without it the script prints one line with the
    install command and exits with status 2, no traceback (the package is blocked here, whether
    or not it is installed)."""
    script = ROOT / "benchmarks" / "titans_pytorch_reference.py"
    code = (
        "import runpy, sys\n"
        "sys.modules['titans_pytorch'] = None  # any import of it now raises ImportError\n"
        f"sys.argv = [{str(script)!r}, '--steps', '1']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install titans-pytorch" in lines[0], done.stderr
    assert not done.stdout


def test_mirasc_never_imports_titans_pytorch():
    """The outside reference stays outside: no module of the package imports it."""
    for path in (ROOT / "mirasc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "titans_pytorch" for n in names), path


def test_plot_recall_draws_the_recorded_table(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    plot_recall = importlib.import_module("plot_recall")
    table = tmp_path / "table.md"
    table.write_text(
        "MQAR (toy)\n\n| model | L = 128 | L = 256 | s/run (by L) |\n| --- | --- | --- | --- |\n"
        "| a | 96.9% (97.1%, 96.7%) | diverged at step 3, 40.0% | 1, 2 |\n"
        "| b | 12.0% | not run | –, – |\n\nS-NIAH (toy)\n\n"
        "| model | L = 128 | s/run (by L) |\n| --- | --- | --- |\n| a | 50.0% | 3 |\n"
    )
    (mqar, lengths, rows), (niah, _, niah_rows) = plot_recall.tables_of(table.read_text())
    assert mqar == "MQAR (toy)" and niah == "S-NIAH (toy)" and lengths == [128, 256]
    assert [r["accuracy"] for r in rows["a"][128]] == pytest.approx([0.971, 0.967])
    assert [r["accuracy"] for r in rows["a"][256]] == [0.4]  # the diverged seed is not drawn
    assert rows["b"][256] == [] and niah_rows["a"][128] == [{"accuracy": 0.5}]
    assert plot_recall.main([str(table), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "mqar.png").stat().st_size > 0 and (tmp_path / "niah.png").exists()
