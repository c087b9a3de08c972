"""The Triton backend on a GPU, in one command: correctness first, then speed.

1. Correctness: every shipped spec's Triton backend on CUDA, fp32 and bf16 inputs, against the
   float64 reference: outputs, final states and every gradient (mirasc.testing.compare, what the
   property tests use), at shapes that cross chunks and saved segments: 75 tokens (the chunked
   kernels, where a spec has them) and 20 (the recurrent ones). `--pytest` also runs
   tests/test_triton_backend.py on CUDA (the interpreter's property tests, unchanged).
2. Speed: forward and forward+backward of the triton and torch backends for every shipped spec
   (for specs with chunked kernels, "triton" is those at these lengths, the WY form for deltanet
   and gated_deltanet, the dual form for linear_attention, titans, ttt_mlp, yaad and moneta,
   the kl kernels for memora, and "triton recurrent" their fused recurrent kernels)
   at B=8, T=4096, H=16, D=64 and D=128, bf16 inputs: ms, tokens/s, achieved GB/s (the bytes of
   the inputs, outputs and gradients: the least any implementation must move) and each row's
   speed-up over the torch backend (its fwd+bwd time / the row's), measured in the same run. Where flash-linear-attention is importable, its
   chunk_gated_delta_rule and fused_recurrent_gated_delta_rule run beside gated_deltanet, and
   chunk_linear_attn beside linear_attention (their outputs compared with ours); where
   titans-pytorch is installed, its NeuralMemory beside titans (weights committed every chunk,
   as mirasc's; the whole module, timed, not compared).
3. Decoding: one token per call with the state carried in and out (no gradient), B=8, H=16,
   D=64 and 128: microseconds per step of the triton backend (its recurrent kernels; linear
   memories with coordinate-wise updates split the value columns across programs) and the
   torch backend, measured in the same run; fla's fused_recurrent_gated_delta_rule beside
   gated_deltanet where it is importable.

    python benchmarks/gpu.py [--specs ...] [--D 64 128] [--budget 420] [--pytest]
    python benchmarks/gpu.py --smoke     # tiny shapes on CPU under TRITON_INTERPRET=1 (CI)

A deadline (`--budget` seconds) stops the timing sweep cleanly: first compiles of the fused MLP
kernels take minutes, and a lent GPU's time is short. Rows not reached are listed as skipped.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

from mirasc import testing  # noqa: E402

SHIPPED = [p.stem for p in sorted((ROOT / "specs").glob("*.miras"))]
TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}


def inputs(spec, B, T, H, D, dtype, device, seed=0):
    """Benchmark inputs made on the device: unit q and k, gates in the test ranges."""
    g = torch.Generator(device=device).manual_seed(seed)
    Dv = D

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

    q, k = (torch.nn.functional.normalize(randn(B, T, H, D), dim=-1) for _ in range(2))
    v = randn(B, T, H, Dv)
    gates = {}
    for name, (lo, hi) in testing.gate_ranges(spec).items():
        u = torch.rand(B, T, H, generator=g, device=device)
        gates[name] = lo + (hi - lo) * u
    initial = None
    if spec.needs_initial_state:
        ws = [randn(B, H, i, o) * i**-0.5 for i, o in testing.weight_shapes(spec, D, Dv)]
        if spec.retention.kind == "kl":
            ws = [w.softmax(-1) for w in ws]
        initial = tuple(ws)
    return q.to(dtype), k.to(dtype), v.to(dtype), gates, initial


def correctness(args, device) -> bool:
    print("== correctness: Triton on", device, "vs the float64 reference (relative RMS error)")
    ok = True
    # D = 16 keeps the first compile of each spec's kernels short (MLP memories: seconds); 75
    # tokens take the chunked kernels where a spec has them, 20 the recurrent ones
    B, H, D = (1, 2, 4) if args.smoke else (2, 3, 16)
    lengths = (13,) if args.smoke else (75, 20)
    for name in args.specs:
        module = importlib.import_module(f"generated.{name}")
        spec = testing.spec_of(module)
        for T, dtype in itertools.product(lengths, (torch.float32, torch.bfloat16)):
            case = testing.make_case(spec, B=B, T=T, H=H, Dk=D, dtype=dtype, seed=1).to(device)
            start = time.perf_counter()
            errors = testing.compare(module, case, "triton")
            worst = max(errors, key=errors.get)
            good = all(e <= TOL[dtype] for e in errors.values())
            ok &= good
            print(
                f"  {name:18s} T={T:<3d} {str(dtype)[6:]:9s} worst {worst:24s} {errors[worst]:.2e} "
                f"{'ok' if good else 'FAIL'}  ({time.perf_counter() - start:.1f} s incl. compile)"
            )
    if args.pytest:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_triton_backend.py")]
        )
        ok &= done.returncode == 0
    return ok


def bench(fn, device, repeats: int) -> float:
    """Milliseconds per call: median of `repeats` after a warm-up (which compiles); a single
    timed call where one takes over a second (the torch backend's per-token loops)."""
    fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = 1e3 * (time.perf_counter() - start)
    if device == "cpu" or once > 1e3:
        return once
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def runner(call, q, k, v, backward: bool):
    """A closure running forward (and backward with a fixed output gradient)."""
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    do = torch.randn_like(q[..., :1].expand(*q.shape[:3], v.shape[-1]))

    def run():
        o = call(*leaves)
        if backward:  # an outside module may not take all three (titans-pytorch: q and k)
            torch.autograd.grad(o, leaves, do, allow_unused=True)

    return run


def io_bytes(q, v, gates, backward: bool) -> int:
    """Bytes of inputs and outputs (and their gradients): the least any kernel must move."""
    qkvo = 3 * q.numel() * q.element_size() + v.numel() * v.element_size()
    g = sum(x.numel() * 4 for x in gates.values())
    return (2 if backward else 1) * (qkvo + g) + (v.numel() * v.element_size() if backward else 0)


def fla_rows(spec_module, q, k, v, gates, device):
    """flash-linear-attention's gated delta rule on the same inputs (keep = 1 - alpha)."""
    try:
        from fla.ops.gated_delta_rule import (
            chunk_gated_delta_rule,
            fused_recurrent_gated_delta_rule,
        )
    except ImportError:
        return []
    log_keep = torch.log1p(-gates["alpha"])
    beta = gates["beta"]
    ours, _ = spec_module.op(q, k, v, **gates, backend="triton")
    rows = []
    for label, fn in (
        ("fla chunk", chunk_gated_delta_rule),
        ("fla fused_recurrent", fused_recurrent_gated_delta_rule),
    ):

        def call(q_, k_, v_, fn=fn):
            return fn(q_, k_, v_, g=log_keep, beta=beta, scale=1.0)[0]

        agreement = testing.relative_error(call(q, k, v).float(), ours.float())
        rows.append((label, call, agreement))
    return rows


def recurrent_only(module, gates: dict, initial):
    """The op on its fused recurrent kernels at any length, for a spec whose Triton backend
    sends training-length calls to chunked kernels (WY, dual form or kl):
    the chunked-against-recurrent comparison, measured in the same run; None for a spec
    without chunked kernels."""
    backend = module.triton_backend
    if hasattr(backend, "WY_MIN_TOKENS"):
        holder, name = backend, "WY_MIN_TOKENS"
    elif any(hasattr(backend, kind) for kind in ("dual", "mlp", "kl")):
        holder = next(getattr(backend, k) for k in ("dual", "mlp", "kl") if hasattr(backend, k))
        name = "min_tokens"
    else:
        return None

    def call(q_, k_, v_):
        threshold, streaming = getattr(holder, name), getattr(holder, "streaming", None)
        setattr(holder, name, float("inf"))
        if streaming is not None:  # MLP memories: calls without autograd too
            holder.streaming = False
        try:
            return module.op(q_, k_, v_, **gates, initial_state=initial, backend="triton")[0]
        finally:
            setattr(holder, name, threshold)
            if streaming is not None:
                holder.streaming = streaming

    return call


def fla_linear_rows(spec_module, q, k, v, gates):
    """flash-linear-attention's chunked linear attention (no normaliser) on the same inputs:
    o_t = sum_{s <= t} (q_t . k_s) v_s, linear_attention's semantics."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        return []
    ours, _ = spec_module.op(q, k, v, **gates, backend="triton")

    def call(q_, k_, v_):
        return chunk_linear_attn(q_, k_, v_, scale=1.0, normalize=False)[0]

    return [("fla chunk", call, testing.relative_error(call(q, k, v).float(), ours.float()))]


def titans_pytorch_rows(spec_module, q, device: str) -> list:
    """titans-pytorch's `NeuralMemory` (where installed: the `reference` extra) at titans'
    configuration: chunk 16 with its weights committed after every chunk (batch_size = chunk,
    so each chunk's gradient is taken at the chunk's start state, as in mirasc), H heads of D, a
    2-layer MLP memory of expansion 4, momentum and decay. It is the whole module, its
    projections of the input into keys, values, queries and gates included, reading q's rows
    and storing k's; what else differs is benchmarks/titans_pytorch_reference.py's
    DIFFERENCES. Its output is not compared with ours."""
    try:
        from titans_pytorch import MemoryMLP, NeuralMemory
    except ImportError:
        return []
    B, T, H, D = q.shape
    chunk = testing.spec_of(spec_module).chunk
    memory = NeuralMemory(dim=H * D, chunk_size=chunk, batch_size=chunk, dim_head=D, heads=H,
                          model=MemoryMLP(D, depth=2, expansion_factor=4.0),
                          momentum=True).to(device)  # fmt: skip

    def call(q_, k_, v_):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=q_.dtype == torch.bfloat16):
            seq, store = (t.reshape(B, T, H * D).float() for t in (q_, k_))
            return memory(seq, store_seq=store)[0].view(B, T, H, D)

    return [("titans-pytorch", call, None)]


def timings(args, device, deadline: float) -> None:
    B, T, H = (1, 40, 2) if args.smoke else (8, 4096, 16)
    dims = [8] if args.smoke else args.D
    dtype = torch.float32 if args.smoke else torch.bfloat16
    print(f"\n== speed: B={B} T={T} H={H}, {str(dtype)[6:]} inputs, {torch.__version__}")
    print(f"{'spec':16s} {'D':>4s} {'impl':22s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} "
          f"{'Mtok/s':>8s} {'GB/s':>7s} {'torch/it':>9s}")  # fmt: skip
    skipped = []
    specs = {
        name: testing.spec_of(importlib.import_module(f"generated.{name}")) for name in args.specs
    }
    # linear memories first (their kernels compile in seconds), then MLP memories by head size
    order = sorted(
        ((name, D) for name in args.specs for D in dims),
        key=lambda nd: (specs[nd[0]].depth > 1, nd[1], args.specs.index(nd[0])),
    )
    for name, D in order:
        if time.monotonic() > deadline:
            skipped.append(f"{name} D={D}")
            continue
        module = importlib.import_module(f"generated.{name}")
        spec = specs[name]
        q, k, v, gates, initial = inputs(spec, B, T, H, D, dtype, device)
        impls = []
        for backend in ("triton", "torch"):

            def call(q_, k_, v_, backend=backend, module=module, gates=gates, initial=initial):
                return module.op(q_, k_, v_, **gates, initial_state=initial,
                                 backend=backend)[0]  # fmt: skip

            impls.append((backend, call, None))
        recurrent = recurrent_only(module, gates, initial)
        if recurrent is not None:
            impls.append(("triton recurrent", recurrent, None))
        if name == "gated_deltanet":
            impls += fla_rows(module, q, k, v, gates, device)
        if name == "linear_attention":
            impls += fla_linear_rows(module, q, k, v, gates)
        if name == "titans":
            impls += titans_pytorch_rows(module, q, device)
        measured = []
        for label, call, agreement in impls:
            try:
                fwd = bench(runner(call, q, k, v, False), device, args.repeats)
                both = bench(runner(call, q, k, v, True), device, args.repeats)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                print(f"{name:16s} {D:4d} {label:22s} n/a ({type(e).__name__}: {str(e)[:60]})")
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            measured.append((label, fwd, both, agreement))
        torch_both = {label: both for label, _, both, _ in measured}.get("torch")
        for label, fwd, both, agreement in measured:
            tokens = B * T / (both / 1e3) / 1e6
            gbs = io_bytes(q, v, gates, True) / (both / 1e3) / 1e9
            ratio = f"{torch_both / both:8.2f}x" if torch_both else f"{'-':>9s}"
            note = f"  (output vs ours: {agreement:.1e})" if agreement is not None else ""
            print(
                f"{name:16s} {D:4d} {label:22s} {fwd:9.2f} {both:11.2f} {tokens:8.2f} "
                f"{gbs:7.1f} {ratio}{note}"
            )
    if skipped:
        print("\nskipped (deadline):", ", ".join(skipped))


def decoding(args, device, deadline: float) -> None:
    """Microseconds per decoding step (one token, the state in and out, no gradient)."""
    B, H = (1, 2) if args.smoke else (8, 16)
    dims = [8] if args.smoke else args.D
    dtype = torch.float32 if args.smoke else torch.bfloat16
    print(f"\n== decoding: one token per call, B={B} H={H}, {str(dtype)[6:]} inputs")
    print(f"{'spec':16s} {'D':>4s} {'impl':22s} {'us/step':>9s} {'torch/it':>9s}")
    skipped = []
    depth = {name: testing.spec_of(importlib.import_module(f"generated.{name}")).depth
             for name in args.specs}  # fmt: skip
    # linear memories first: their kernels compile in seconds, an MLP memory's in minutes
    for name, D in sorted(itertools.product(args.specs, dims), key=lambda nd: depth[nd[0]] > 1):
        if time.monotonic() > deadline:
            skipped.append(f"{name} D={D}")
            continue
        module = importlib.import_module(f"generated.{name}")
        q, k, v, gates, initial = inputs(testing.spec_of(module), B, 1, H, D, dtype, device)
        if initial is None:  # a linear memory's state, for every implementation alike
            initial = (torch.zeros(B, H, D, D, device=device),)
        impls = [(b, op_step(module, b, q, k, v, gates, initial)) for b in ("triton", "torch")]
        chunked = getattr(module.triton_backend, "mlp", None) or getattr(
            module.triton_backend, "kl", None
        )
        if getattr(chunked, "streaming", False):  # an MLP memory decodes on its chunked kernel
            impls.append(("triton recurrent", without_streaming(chunked, impls[0][1])))
        if name == "gated_deltanet":
            impls += fla_decoding(q, k, v, gates, initial[0])
        measured = [(label, 1e3 * bench(step, device, args.repeats)) for label, step in impls]
        torch_us = dict(measured).get("torch")
        for label, us in measured:
            ratio = f"{torch_us / us:8.2f}x" if torch_us else f"{'-':>9s}"
            print(f"{name:16s} {D:4d} {label:22s} {us:9.1f} {ratio}")
    if skipped:
        print("\nskipped (deadline):", ", ".join(skipped))


def without_streaming(chunked, step):
    """`step` with an MLP memory's calls without autograd on its recurrent kernels (`chunked`:
    its MlpChunk or KlChunk)."""

    def run():
        chunked.streaming = False
        try:
            step()
        finally:
            chunked.streaming = True

    return run


def op_step(module, backend: str, q, k, v, gates: dict, initial):
    """One decoding step of the op on `backend`: the state in and out, no gradient."""

    def step():
        with torch.no_grad():
            module.op(q, k, v, **gates, initial_state=initial, output_final_state=True,
                      backend=backend)  # fmt: skip

    return step


def fla_decoding(q, k, v, gates, state) -> list:
    """fla's fused recurrent gated delta rule on one token with a state ([B, H, Dk, Dv], as
    ours), where it is importable."""
    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except ImportError:
        return []
    log_keep, beta = torch.log1p(-gates["alpha"]), gates["beta"]

    def step():
        with torch.no_grad():
            fused_recurrent_gated_delta_rule(q, k, v, g=log_keep, beta=beta, scale=1.0,
                                             initial_state=state, output_final_state=True)  # fmt: skip

    return [("fla fused_recurrent", step)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--specs", nargs="*", default=SHIPPED, metavar="NAME",
        help="packages under generated/ (default: every shipped spec; compile your own there "
        "first: mirasc compile my.miras -o generated)",
    )  # fmt: skip
    p.add_argument("--D", nargs="*", type=int, default=[64, 128], metavar="N",
                   help="head sizes (default: 64 128)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, metavar="N",
                   help="timed runs per measurement, after a warm-up; the median is reported (default: 5)")  # fmt: skip
    p.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for the timing sweeps (four fifths for training, the rest decoding)",
    )
    p.add_argument("--pytest", action="store_true", help="also run the Triton test file")
    p.add_argument("--skip-correctness", action="store_true",
                   help="time only, without the CUDA-vs-reference checks first")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny shapes, CPU interpreter")
    args = p.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ok = True if args.skip_correctness else correctness(args, device)
    start = time.monotonic()
    timings(args, device, start + 0.8 * args.budget)
    decoding(args, device, start + args.budget)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
