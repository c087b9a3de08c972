"""The fuzz harness's worker process: reads one JSON request per line ({"text", "build"}) and
answers one JSON line ({"outcome", "detail"}). It runs in its own process so that the harness
can kill it on a hang and survive a crash of the interpreter itself.

Outcomes: `rejected:<MirascError subclass>` (the promise kept: a located error),
`checked` (parse and check passed; no build asked), `built` (every stage, the package written,
imported, two small cases run by its torch backend and by the reference with the same result,
its SPEC_IR equal to the spec, its normalised text reloading to the same spec, and `mirasc
explain` exiting 0), `non-finite`
and `mismatch` (built, but a case disagrees: reported, not defects), and defects:
`crash:<exception type>`, `unlocated` (a MirascError without file:line:col), `import-failure`,
`run-failure:<exception type>`, `roundtrip-failure`, `cli-failure:...`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from mirasc.cli.main import main as cli_main
from mirasc.compiler.package import write_package
from mirasc.compiler.pipeline import build
from mirasc.errors import MirascError
from mirasc.frontend.checker import load
from mirasc.ir.spec import from_data

FILE = "fuzz.miras"


def _import_package(files: dict[str, str], workdir: Path, index: int):
    """Write the package under a unique name and import it."""
    name = f"fuzzpkg{index + 1}"
    write_package(files, workdir / name)
    importlib.invalidate_caches()
    module = importlib.import_module(name)
    for sub in ("ops", "layer", "elementwise", "torch_backend"):
        importlib.import_module(f"{name}.{sub}")
    return module


def _run_once(module, spec) -> dict | None:
    """Two small cases through the torch backend and the autograd reference: three tokens from
    the default state, and 2C + 1 tokens (chunk boundaries, a ragged last chunk) from a random
    state. `run-failure` if either raises; `non-finite` (a formula that overflows or leaves the
    reals on these inputs, such as sqrt(z) for z < 0) or `mismatch` if they disagree, both
    reported, not defects; None when they agree."""
    from mirasc.testing.cases import compare, make_case

    T = min(2 * spec.chunk + 1, 33)
    cases = {
        "3 tokens, default state": make_case(spec, B=1, T=3, H=1, Dk=3, Dv=3),
        f"{T} tokens, random state": make_case(
            spec, B=1, T=T, H=1, Dk=3, Dv=3, seed=1, with_initial_state=True
        ),
    }
    for where, case in cases.items():
        try:
            errors = compare(module, case, "torch")
        except MirascError as e:
            return dict(outcome=f"run-rejected:{type(e).__name__}", detail=str(e)[:500])
        except Exception as e:
            detail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
            return dict(outcome=f"run-failure:{type(e).__name__}", detail=detail[-3000:])
        worst = max(errors.values())
        if not math.isfinite(worst):
            return dict(outcome="non-finite", detail=f"{where}: {errors}"[:500])
        if worst > 1e-6:
            detail = f"{where}: worst relative error {worst:.3g}: {errors}"
            return dict(outcome="mismatch", detail=detail[:500])
    return None


def _full_build(text: str, workdir: Path, index: int) -> dict:
    result = build(text, FILE)
    try:
        module = _import_package(result.files, workdir, index)
    except Exception as e:  # any failure to import generated code is a defect
        return dict(outcome="import-failure", detail=f"{type(e).__name__}: {e}"[:2000])
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == f"fuzzpkg{index + 1}"]:
            del sys.modules[key]
        shutil.rmtree(workdir / f"fuzzpkg{index + 1}", ignore_errors=True)
    ran = _run_once(module, result.spec)
    if ran is not None:
        return ran
    if from_data(module.SPEC_IR) != result.spec:
        return dict(outcome="roundtrip-failure", detail="SPEC_IR differs from the spec")
    try:
        again = load(result.spec.text(), "normalised.miras")
    except MirascError as e:
        return dict(outcome="roundtrip-failure", detail=f"text() does not reload: {e}"[:2000])
    if again != result.spec:
        return dict(outcome="roundtrip-failure", detail="text() reloads to another spec")
    return _explain(text, workdir) or dict(outcome="built", detail="")


def _explain(text: str, workdir: Path) -> dict | None:
    """`mirasc explain` on the spec: a `cli-failure` unless it exits 0 (None then)."""
    path = workdir / FILE
    path.write_text(text, encoding="utf-8")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = cli_main(["explain", "--ascii", str(path)])
    if code != 0:
        return dict(outcome=f"cli-failure:explain exit {code}", detail=sink.getvalue()[-2000:])
    return None


def handle(request: dict, workdir: Path, index: int) -> dict:
    """Run one input through the stages asked for and classify what happened."""
    text = request["text"]
    try:
        if request["build"]:
            return _full_build(text, workdir, index)
        load(text, FILE)
        return dict(outcome="checked", detail="")
    except MirascError as e:
        if e.span is None or e.span.line == 0:
            return dict(outcome="unlocated", detail=str(e)[:2000])
        return dict(outcome=f"rejected:{type(e).__name__}", detail="")
    except BaseException as e:  # a crash of any kind is what the harness hunts
        if isinstance(e, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        return dict(outcome=f"crash:{type(e).__name__}", detail=detail[-3000:])


def _warm_up(workdir: Path) -> None:
    """One shipped spec through every stage, so that importing torch, SymPy and the generated
    code's dependencies (seconds on a loaded machine) is not charged to the first input."""
    deltanet = Path(__file__).resolve().parents[2] / "specs" / "deltanet.miras"
    reply = handle(dict(text=deltanet.read_text(encoding="utf-8"), build=True), workdir, -1)
    if reply["outcome"] != "built":
        raise SystemExit(f"warm-up failed: {reply}")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mirasc-fuzz-"))
    sys.path.insert(0, str(workdir))
    replies, sys.stdout = sys.stdout, sys.stderr  # nothing an input prints can garble a reply
    try:
        _warm_up(workdir)
        replies.write(json.dumps(dict(ready=True)) + "\n")
        replies.flush()
        for index, line in enumerate(sys.stdin):
            reply = handle(json.loads(line), workdir, index)
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
