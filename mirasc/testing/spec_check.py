"""`mirasc check`: a spec's torch or Triton backend against the float64 autograd reference on
random cases (shapes, ragged chunks, gates, initial states), and a split call continuing a chunk
against one call, reporting the worst error per tensor. Without a GPU the Triton kernels run in
Triton's CPU interpreter."""

from __future__ import annotations

import dataclasses
import os
import random
import warnings

import torch

from . import cases as testing

TOLERANCE = {
    # fp64 backend vs fp64 oracle: identical maths in another order; 1e-9 leaves room for the
    # conditioning of long products of gates while catching any wrong term (errors are O(1)).
    "float64": 1e-9,
    # fp32 backend vs fp64 oracle: ~1e-7 per operation, amplified by T sequential updates.
    "float32": 2e-3,
}
HALF_ULP = {"float64": 1.1e-16, "float32": 6e-8}


def allowances(module, case, results: list, tol: float, dtype: str) -> dict:
    """The error each tensor of a case may have: `tol`, or, where some error exceeds it, 5x
    how far the exact answer moves when the inputs move by half an ulp of their dtype
    (`cases.rounding_sensitivity`): on an ill-conditioned case (a LayerNorm over three values,
    say) no implementation in that dtype does better. Measured only when needed (three more
    reference runs); a split call's output is held to its output's allowance."""
    if all(err <= tol for errors, _ in results for err in errors.values()):
        return {}
    moved = testing.rounding_sensitivity(module, case, half_ulp=HALF_ULP[dtype])
    allowed = {name: max(tol, 5 * value) for name, value in moved.items()}
    allowed["o:split+continue"] = allowed.get("o", tol)
    return allowed


def random_shape(rng: random.Random, spec) -> dict:
    """Sizes that cover single tokens, ragged last chunks and several chunks (at least 3 values
    under a LayerNorm, whose output over 2 values is degenerate)."""
    chunk = spec.chunk
    T = rng.choice(
        [1, chunk, chunk + 1, 2 * chunk + rng.randint(1, max(1, chunk - 1)), rng.randint(1, 12)]
    )
    low = 3 if spec.architecture.norm else 2
    Dk = rng.randint(low, 6)
    return dict(
        B=rng.randint(1, 2),
        T=min(T, 24),
        H=rng.randint(1, 2),
        Dk=Dk,
        Dv=Dk if spec.architecture.residual else rng.randint(low, 6),
    )


def chunked_tokens(module) -> int | None:
    """The call length from which the module's Triton backend runs its chunked kernels (the WY
    or dual form of a linear or MLP memory, or a kl memory's, where its plan has them), or
    None."""
    backend = module.triton_backend
    if hasattr(backend, "wy_chunk"):
        return backend.WY_MIN_TOKENS
    for name in ("dual", "mlp", "kl"):
        if hasattr(backend, name):
            return getattr(backend, name).min_tokens
    return None


LARGE = 100.0  # the probe's residual scale: past fp32's exp overflow (88), as an outlier is


def _not_finite(module, result: tuple) -> list:
    """The names of a `cases.run` result's tensors that hold an inf or a NaN."""
    return [n for n, t in testing.named(module, result).items() if not torch.isfinite(t).all()]


def large_residual_probe(module, spec, backend: str, device: str, seed: int) -> str:
    """One line on whether the backend stays finite in fp32 on a case whose targets are scaled
    by LARGE (residuals of hundreds, an outlier's), and if not, whether the torch backend in
    float64 does: a loss whose value or derivatives overflow fp32 there, or whose update
    diverges (`sum(exp(y - v))`, say), trains to NaN on such outliers."""
    case = testing.make_case(spec, B=1, T=spec.chunk + 3, H=2, Dk=4, seed=seed)
    case = dataclasses.replace(case, v=case.v * LARGE)
    with warnings.catch_warnings():  # overflow is what is probed (numpy's, in the interpreter)
        warnings.simplefilter("ignore", RuntimeWarning)
        wide = _not_finite(module, testing.run(module, case, "torch"))
        narrow = testing.run(module, case.to(device=device, dtype=torch.float32), backend)
    lost = [name for name in _not_finite(module, narrow) if name not in wide]
    where = f"fp32 with targets x {LARGE:g} (residuals of hundreds)"
    if lost:
        return (
            f"{where}: not finite in {', '.join(lost)}, where float64 is: the loss's value or "
            "derivatives overflow fp32 there (a warning: training on such outliers gives NaN)"
        )
    if wide:
        return (
            f"{where}: not finite in {', '.join(wide)}, in float64 too: the update itself "
            "diverges at such residuals (a warning: the loss is not robust to outliers)"
        )
    return f"{where}: finite"


def check_spec(
    path, examples: int = 20, seed: int = 0, dtype: str | None = None, backend: str = "torch"
) -> int:
    """Print the worst error per tensor over `examples` random cases; 1 if any is over."""
    device = "cpu"
    if backend == "triton":
        if torch.cuda.is_available():
            device = "cuda"
        else:  # must be set before triton is first imported (by the compiled package)
            os.environ.setdefault("TRITON_INTERPRET", "1")
    dtype = dtype or ("float32" if backend == "triton" else "float64")
    import mirasc

    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety

        def tqdm(x, **_):
            return x

    module = mirasc.compile(path)
    spec = testing.spec_of(module)
    strategies = module.torch_backend.STRATEGIES if backend == "torch" else (None,)
    long_calls = chunked_tokens(module) if backend == "triton" else None
    rng = random.Random(seed)
    tol = TOLERANCE[dtype]
    worst: dict[str, tuple[float, str, float]] = {}  # error, where, what it was allowed
    for i in tqdm(range(examples), desc=f"checking {spec.name}", unit="case"):
        shape = random_shape(rng, spec)
        if long_calls is not None and i % 2:  # every other case long enough for the chunked kernels
            shape["T"] = long_calls + rng.randint(0, 15)
            if i % 4 == 3:  # and every other of those on whole 16-wide tiles, several per MLP
                shape["Dk"] = shape["Dv"] = 16
        case = testing.make_case(spec, **shape, dtype=getattr(torch, dtype), seed=seed * 100003 + i)
        case = case.to(device)
        results = [
            (testing.compare(module, case, backend, s), f"{s or backend} {shape}")
            for s in strategies
        ]
        if shape["T"] > 1:  # decoding's contract: a call may continue a chunk from its anchor
            split = rng.randint(1, shape["T"] - 1)
            error = testing.continuation_error(module, case, split, backend=backend)
            results.append(({"o:split+continue": error}, f"split at {split} {shape}"))
        allowed = allowances(module, case, results, tol, dtype)
        for errors, where in results:
            for name, err in errors.items():
                if err > worst.get(name, (-1.0, "", tol))[0] or err != err:
                    worst[name] = (err, where, allowed.get(name, tol))
    what = (
        f"{len(strategies)} strategies ({', '.join(strategies)})"
        if backend == "torch"
        else f"the Triton kernels on {device}{' (interpreter)' if device == 'cpu' else ''}"
        + (
            f", every other case >= {long_calls} tokens (chunked kernels), every fourth at Dk = Dv = 16"
            if long_calls
            else ""
        )
    )
    print(
        f"\n{spec.name}: {examples} cases x {what}, {dtype}, "
        f"tolerance {tol:g} (relative RMS vs the float64 reference)\n"
    )
    print(f"{'tensor':28s} {'worst error':>12s} {'allowed':>10s}  case")
    failed = 0
    for name, (err, where, bound) in worst.items():
        bad = not (err <= bound)
        failed += bad
        print(f"{name:28s} {err:12.3e} {bound:10.1e}  {where}{'  FAIL' if bad else ''}")
    if any(bound > tol for _, _, bound in worst.values()):
        print(
            f"\nallowed above {tol:g}: an ill-conditioned case, whose exact answer moves that much"
            f" (/5) when its inputs move by half an ulp of {dtype}"
        )
    print(f"\n{large_residual_probe(module, spec, backend, device, seed)}")
    print(f"\n{'FAILED' if failed else 'ok'}: {failed} tensor(s) over tolerance")
    return 1 if failed else 0
