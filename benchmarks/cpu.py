"""CPU throughput and activation memory of the generated torch backend, in one run.

For every shipped spec: tokens/s of forward+backward (all inputs require grad) for each of the
torch backend's strategies (the recurrent per-chunk loop; the chunked dual form with its
explicit backward pass, "chunked", and differentiated by autograd, "chunked_autograd"; the WY
form where the spec allows it; MEMORA's chunked mirror steps, "kl") and for the float64
reference oracle; the bytes each strategy's forward pass keeps for its backward pass (distinct
storages seen by `torch.autograd.graph.saved_tensors_hooks`); and the ratios of the default strategy against
the reference and the recurrent loop, and of the explicit backward against autograd's.
Default shape: B=2, T=1024, H=4, D=64.

    python benchmarks/cpu.py [--specs titans yaad] [--T 1024] [--repeats 2] [--threads 2]
        [--reference-repeats 0]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirasc import testing  # noqa: E402

STRATEGIES = ("recurrent", "chunked_autograd", "chunked", "wy", "chunked_kl")


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


def saved_bytes(module, case, strategy: str) -> int:
    """Bytes of the distinct storages that one forward pass saves for its backward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        testing.run(module, case, "torch", strategy)
    return sum(storages.values())


def measure(module, case, tokens: int, args) -> tuple[dict, dict]:
    """(tokens/s per strategy and for the reference, saved MiB per strategy)."""
    rate, saved = {}, {}
    for strategy in module.torch_backend.STRATEGIES:
        rate[strategy] = tokens / timed(step(module, case, "torch", strategy), args.repeats)
        if strategy in ("chunked_autograd", "chunked"):
            saved[strategy] = saved_bytes(module, case, strategy) / 2**20
    if args.reference_repeats > 0:
        rate["reference"] = tokens / timed(step(module, case, "reference"), args.reference_repeats)
    return rate, saved


def row(name: str, chunk: int, default: str, rate: dict, saved: dict) -> str:
    cells = " ".join(
        f"{rate[c]:9.0f}" if c in rate else f"{'-':>9s}" for c in ("reference", *STRATEGIES)
    )
    ratio = (
        f"{rate['chunked'] / rate['chunked_autograd']:8.1f}x" if "chunked" in rate else f"{'-':>9s}"
    )
    memory = " ".join(
        f"{saved[c]:9.1f}" if c in saved else f"{'-':>9s}" for c in ("chunked_autograd", "chunked")
    )
    vs_ref = f"{rate[default] / rate['reference']:7.1f}x" if "reference" in rate else f"{'-':>8s}"
    return (
        f"{name:17s} {chunk:5d} {cells} {default:>9s} "
        f"{vs_ref} {rate[default] / rate['recurrent']:9.1f}x {ratio} {memory}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--specs", nargs="*", default=[s.stem for s in sorted((ROOT / "specs").glob("*.miras"))]
    )
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reference-repeats", type=int, default=1, help="0 skips the reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.B * args.T
    print(
        f"B={args.B} T={args.T} H={args.H} D={args.D}, fwd+bwd, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; tokens/s (higher is better); saved: MiB kept for "
        "the backward pass\n"
    )
    header = f"{'spec':17s} {'chunk':>5s} " + " ".join(
        f"{c:>9s}" for c in ("reference", "recurrent", "autograd", "chunked", "wy", "kl")
    )
    header += f" {'default':>9s} {'def/ref':>8s} {'def/recur':>10s} {'chk/autog':>9s}"
    header += f" {'saved:ag':>9s} {'saved:chk':>9s}"
    print(header)
    print("-" * len(header))
    for name in args.specs:
        module = importlib.import_module(f"generated.{name}")
        spec = testing.spec_of(module)
        case = testing.make_case(
            spec, B=args.B, T=args.T, H=args.H, Dk=args.D, dtype=torch.float32, seed=0
        )
        rate, saved = measure(module, case, tokens, args)
        default = module.torch_backend.STRATEGIES[0]
        print(row(name, spec.chunk, default, rate, saved), flush=True)
    print(
        "\n('autograd' is the strategy chunked_autograd: the dual form differentiated by autograd)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
