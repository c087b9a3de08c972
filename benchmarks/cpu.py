"""CPU throughput of the generated torch backend against the autograd reference, in one run.

For every shipped spec: tokens/s of forward+backward (all inputs require grad) for each of the
torch backend's strategies (the recurrent per-chunk loop; the chunked dual form and the WY form
where the spec allows them) and for the float64 reference oracle, with the default strategy's
ratios against the reference and against the recurrent loop. Default shape: B=2, T=1024, H=4,
D=64.

    python benchmarks/cpu.py [--specs titans yaad] [--T 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirasc import testing  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` runs (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def step(module, case, backend, strategy=None):
    def run():
        testing.run(module, case, backend, strategy)

    return run


def main(argv=None) -> int:
    import importlib

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--specs", nargs="*", default=[s.stem for s in sorted((ROOT / "specs").glob("*.miras"))]
    )
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reference-repeats", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    tokens = args.B * args.T
    print(
        f"B={args.B} T={args.T} H={args.H} D={args.D}, fwd+bwd, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; tokens/s (higher is better)\n"
    )
    columns = ("reference", "recurrent", "chunked", "wy")
    header = f"{'spec':18s} {'chunk':>5s} " + " ".join(f"{c:>10s}" for c in columns)
    header += f" {'default':>9s} {'default/ref':>12s} {'default/recurrent':>18s}"
    print(header)
    print("-" * len(header))
    for name in args.specs:
        module = importlib.import_module(f"generated.{name}")
        spec = testing.spec_of(module)
        case = testing.make_case(
            spec, B=args.B, T=args.T, H=args.H, Dk=args.D, dtype=torch.float32, seed=0
        )
        rate = {}
        for strategy in module.torch_backend.STRATEGIES:
            rate[strategy] = tokens / timed(step(module, case, "torch", strategy), args.repeats)
        rate["reference"] = tokens / timed(step(module, case, "reference"), args.reference_repeats)
        default = module.torch_backend.STRATEGIES[0]
        cells = " ".join(f"{rate[c]:10.0f}" if c in rate else f"{'-':>10s}" for c in columns)
        print(
            f"{name:18s} {spec.chunk:5d} {cells} {default:>9s} "
            f"{rate[default] / rate['reference']:11.1f}x {rate[default] / rate['recurrent']:17.1f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
