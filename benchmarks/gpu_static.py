"""Static GPU quality of the generated Triton kernels, measured without a GPU.

Every shipped spec's `_forward_kernel` and `_backward_kernel` (generated/<spec>/triton_backend.py)
is compiled ahead of time for a Hopper GPU (sm_90), bf16 inputs, with the compile-time constants
and warps the runtime launches it with (FusedRecurrent.meta and launch_options). For each kernel
it reports what decides how well it can run before any GPU is lent: registers per thread, spill
stores and loads, spill instructions inside its innermost loops (`loop_spills`, from the SASS:
where the time goes), stack frame (local memory), shared memory, and the tensor-core instructions
in its PTX (`mma`, `wgmma`) and SASS (`HMMA`, `HGMMA`). A kernel with 255 registers and spills, or
with no tensor-core instruction, will be slow on any GPU. Register and spill figures are ptxas's
own (`-v`, the log of the compile Triton runs); nothing is cached, so every row is a fresh compile.

    python benchmarks/gpu_static.py                        # D=64 everywhere, D=128 for the deltas
    python benchmarks/gpu_static.py --specs deltanet --D 16 32 --markdown --json out.json
    python benchmarks/gpu_static.py --specs gated_deltanet --kernels chunked   # the chunked WY kernels
    python benchmarks/gpu_static.py --jobs 2                  # two compiles at a time

Specs whose plan has the "wy" strategy (deltanet, gated_deltanet) also get the chunked WY kernels
of mirasc.runtime.wy_chunk (rows `wy:<kernel>`), compiled as their training-length calls launch
them: the spec's chunk and decay gate, and 16-byte divisibility of the pointers and the padded
length TP, which Triton specialises on at launch (torch allocations are 16-byte aligned).

Specs whose Triton backend has the chunked dual-form kernels (a linear memory trained by gd:
linear_attention) get rows `dual:forward`, `dual:state_bwd` and `dual:chunk_bwd` the same way (mirasc.runtime.dual_chunk);
those of a two-layer MLP memory (titans, ttt_mlp, yaad) rows `mlp:forward` and `mlp:output` (a
training call's forward pass: the state pass, then every chunk's outputs at once), `mlp:decode`,
and the backward pass's three, `mlp:reads`, `mlp:reads_bwd` and `mlp:backward`
(mirasc.runtime.mlp_chunk), those of a deeper one `deep:forward` and `deep:backward`
(mirasc.runtime.deep_chunk).

Where flash-linear-attention (`fla`) is importable, its chunk_gated_delta_rule state and output
kernels are compiled the same way beside gated_deltanet's (when that spec is among --specs); it is
never a dependency. Triton compiles capability 90 as `sm_90a`, the target with wgmma. Compiling the MLP memories' kernels
at D=64 takes minutes (titans' backward about three).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [p.stem for p in sorted((ROOT / "specs").glob("*.miras"))]
WIDE = {"deltanet": (64, 128), "gated_deltanet": (64, 128)}  # default head sizes beyond D=64
HALVES = ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr")  # the inputs' dtype; the rest is fp32
PTXAS = {
    "registers": r"Used (\d+) registers",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "stack": r"(\d+) bytes stack frame",
}
COLUMNS = (
    "spec", "kernel", "D", "warps", "registers", "spill_stores", "spill_loads", "loop_spills",
    "stack", "shared", "mma", "wgmma", "sass_mma", "seconds",
)  # fmt: skip


@dataclass
class Figures:
    """One compiled kernel's static figures (bytes for spills, stack and shared memory)."""

    spec: str
    kernel: str
    D: int
    warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    loop_spills: int  # SASS spill instructions (STL, LDL) inside innermost loops: the hot ones
    stack: int
    shared: int
    mma: int  # PTX mma.sync instructions (Ampere-style tensor-core ops)
    wgmma: int  # PTX wgmma instructions (Hopper warp-group tensor-core ops)
    sass_mma: int  # SASS HMMA + HGMMA instructions: what the GPU runs
    seconds: float


def backend_of(spec: str):
    """The spec's generated Triton backend."""
    return importlib.import_module(f"generated.{spec}.triton_backend")


def signature(kernel, meta: dict, dtype: str) -> dict:
    """Triton's signature of a generated kernel: the constants of `meta`, the inputs (and their
    gradients' sources) in `dtype`, every other pointer fp32, `scale` fp32, sizes i32."""
    types = {}
    for arg in kernel.arg_names:
        if arg in meta:
            types[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            types[arg] = f"*{dtype}" if arg in HALVES else "*fp32"
        else:
            types[arg] = "fp32" if arg == "scale" else "i32"
    return types


@contextlib.contextmanager
def fresh_compiles():
    """Triton with an empty throwaway cache, always compiling, printing ptxas's `-v` log: a cache
    hit would skip ptxas, and its log is where the register and spill figures come from."""
    from triton import knobs

    with (
        tempfile.TemporaryDirectory() as cache,
        knobs.cache.scope(),
        knobs.compilation.scope(),
        knobs.nvidia.scope(),
    ):
        knobs.cache.dir = cache
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        yield


def compile_logged(source, options: dict):
    """Compile `source` for sm_90; returns the compiled kernel and ptxas's log."""
    import triton
    from triton.backends.compiler import GPUTarget

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    return compiled, log.getvalue()


def ptxas_figures(log: str) -> dict:
    """Registers, spill stores and loads, and stack frame bytes from a ptxas `-v` log."""
    figures = {}
    for name, pattern in PTXAS.items():
        found = re.search(pattern, log)
        if found is None:
            raise RuntimeError(f"no {name!r} in the ptxas log:\n{log}")
        figures[name] = int(found.group(1))
    return figures


def sass_of(cubin: bytes) -> str:
    """The cubin's SASS listing (the bundled cuobjdump disassembles it)."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [knobs.nvidia.cuobjdump.path, "-sass", f.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def sass_tensor_ops(sass: str) -> int:
    """HMMA and HGMMA instructions: the tensor-core operations the GPU runs."""
    return len(re.findall(r"\b(?:HMMA|HGMMA)\.", sass))


def loop_spills(sass: str) -> int:
    """Spill instructions (STL, LDL) inside the innermost loops of a SASS listing, where a kernel
    spends its time: ptxas's spill bytes also count values reloaded once per outer iteration,
    which cost next to nothing. A loop runs from a backward branch's target to the branch."""
    code = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]+)\*/\s+([^;]*);", sass)]
    loops = []
    for at, op in code:
        branch = re.search(r"\bBRA(?:\.\w+)*\s+(0x[0-9a-f]+)", op)
        if branch and int(branch.group(1), 16) < at:
            loops.append((int(branch.group(1), 16), at))
    innermost = [
        (lo, hi) for lo, hi in loops
        if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops)
    ]  # fmt: skip
    spills = re.compile(r"^(?:@!?U?P\w+\s+)?(?:STL|LDL)\b")
    return sum(
        1 for at, op in code if spills.match(op) and any(lo <= at <= hi for lo, hi in innermost)
    )


def figures_of(spec: str, name: str, D: int, compiled, log: str, seconds: float) -> Figures:
    """A row from one compiled kernel and its ptxas log."""
    ptx = compiled.asm["ptx"]
    sass = sass_of(compiled.asm["cubin"])
    return Figures(
        spec=spec,
        kernel=name,
        D=D,
        warps=compiled.metadata.num_warps,
        shared=compiled.metadata.shared,
        mma=len(re.findall(r"^\s*mma\.", ptx, re.MULTILINE)),
        wgmma=len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.MULTILINE)),
        sass_mma=sass_tensor_ops(sass),
        loop_spills=loop_spills(sass),
        seconds=round(seconds, 1),
        **ptxas_figures(log),
    )


def measure(spec: str, name: str, D: int, dtype: str = "bf16") -> Figures:
    """Compile one generated kernel at head size D as the runtime launches it."""
    from triton.compiler import ASTSource

    backend = backend_of(spec)
    kernel = getattr(backend, name)
    meta = backend.fused.meta(D, D, 0)
    source = ASTSource(fn=kernel, signature=signature(kernel, meta, dtype), constexprs=meta)
    start = time.perf_counter()
    compiled, log = compile_logged(source, backend.fused.launch_options(D, D))
    return figures_of(spec, name, D, compiled, log, time.perf_counter() - start)


def chunked_figures(spec: str, label: str, D: int, kernel, meta: dict, options: dict, dtype: str):
    """Compile one chunked kernel as a training-length call launches it: its constants `meta`,
    its launch `options`, and the 16-byte divisibility of its pointers and padded length TP
    that Triton specialises on at launch (torch allocations are 16-byte aligned)."""
    from triton.compiler import ASTSource

    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, arg in enumerate(kernel.arg_names)
        if arg.endswith("_ptr") or arg == "TP"
    }
    source = ASTSource(kernel, signature(kernel, meta, dtype), meta, aligned)
    start = time.perf_counter()
    compiled, log = compile_logged(source, options)
    return figures_of(spec, label, D, compiled, log, time.perf_counter() - start)


def wy_measure(spec: str, name: str, D: int, dtype: str = "bf16") -> Figures:
    """One chunked WY kernel (`name` in wy_chunk.KERNELS) at head size D."""
    backend = backend_of(spec)
    wy = backend.wy_chunk
    dot = wy.tl.float32 if dtype == "fp32" else wy.tl.bfloat16
    meta = wy.meta(name, D, D, backend.WY_BLOCK, backend.WY_RATE_ROW is not None, dot)
    options = wy.launch_options(name, D)
    return chunked_figures(spec, f"wy:{name}", D, wy.KERNELS[name], meta, options, dtype)


def dual_measure(spec: str, name: str, D: int, dtype: str = "bf16") -> Figures:
    """One chunked dual-form kernel (`name`: forward, state_bwd, chunk_bwd) at head size D."""
    backend = backend_of(spec)
    kernel = getattr(backend, f"_dual_{name}_kernel")
    tl = importlib.import_module("triton.language")
    meta = backend.dual.meta(kernel, D, D, tl.float32 if dtype == "fp32" else tl.bfloat16)
    options = backend.dual.launch_options(D, D)
    return chunked_figures(spec, f"dual:{name}", D, kernel, meta, options, dtype)


def mlp_measure(spec: str, name: str, D: int, dtype: str = "bf16") -> Figures:
    """One chunked dual-form kernel of an MLP memory at head size D (`name`: forward, and for
    a two-layer memory output, reads and reads_bwd, then backward, as a training-length call
    launches them, or decode: the forward kernel as a call without autograd continuing a chunk
    launches it)."""
    backend = backend_of(spec)
    tl = importlib.import_module("triton.language")
    mlp = backend.mlp
    kernels = {"backward": mlp.backward_kernel}  # a deep memory's backward is one kernel
    if mlp.reads_kernels:  # the first makes the training outputs too (OUTPUT)
        reads, reads_bwd = mlp.reads_kernels
        kernels.update(output=reads, reads=reads, reads_bwd=reads_bwd)
    meta = mlp.meta(D, D, tl.float32 if dtype == "fp32" else tl.bfloat16, name in kernels)
    if name not in kernels:
        meta["SAVE"], meta["CONT"] = name == "forward", name == "decode"
        if mlp.reads_kernels:  # training: the outputs come from the reads kernel (`output`)
            meta["READS"] = name == "decode"
    elif name in ("output", "reads"):
        meta["OUTPUT"] = name == "output"
    kind = "deep" if has_deep(spec) else "mlp"
    kernel = kernels.get(name, mlp.forward_kernel)
    return chunked_figures(spec, f"{kind}:{name}", D, kernel, meta, mlp.launch_options(D, D), dtype)


def kl_measure(spec: str, name: str, D: int, dtype: str = "bf16") -> Figures:
    """A chunked kernel of a memory under kl retention at head size D (`name`: forward, output
    (an MLP's training outputs) or backward as a training-length call launches them, or decode,
    as `mlp_measure`'s)."""
    backend = backend_of(spec)
    tl = importlib.import_module("triton.language")
    kl = backend.kl
    meta = kl.meta(D, D, tl.float32 if dtype == "fp32" else tl.bfloat16, name == "backward")
    if name in ("forward", "decode"):
        meta["SAVE"], meta["CONT"] = name == "forward", name == "decode"
        if kl.output_kernel is not None:  # training: the outputs come from `output`
            meta["READS"] = name == "decode"
    kernel = {"backward": kl.backward_kernel, "output": kl.output_kernel}.get(
        name, kl.forward_kernel
    )
    return chunked_figures(spec, f"kl:{name}", D, kernel, meta, kl.launch_options(D, D), dtype)


def has_kl(spec: str) -> bool:
    """The spec's Triton backend has the chunked kernels of a kl memory."""
    return hasattr(backend_of(spec), "kl")


def has_mlp(spec: str) -> bool:
    """The spec's Triton backend has the chunked dual-form kernels of an MLP memory."""
    return hasattr(backend_of(spec), "mlp")


def has_deep(spec: str) -> bool:
    """The spec's Triton backend has the chunked kernels of an MLP of three or more layers."""
    return hasattr(backend_of(spec), "_deep_forward_kernel")


def has_dual(spec: str) -> bool:
    """The spec's Triton backend has the chunked dual-form kernels."""
    return hasattr(backend_of(spec), "dual")


def has_wy(spec: str) -> bool:
    """The spec's Triton backend has the chunked WY kernels (its plan has the "wy" strategy)."""
    return hasattr(backend_of(spec), "wy_chunk")


def jobs(specs: list[str], sizes: list[int] | None, kernels: str) -> list[tuple[str, str, int]]:
    """(spec, kernel, D) to compile: the given head sizes, or each spec's defaults; `kernels`
    is "fused" (the recurrent pair), "chunked" (the chunked kernels, WY or dual form, where planned)
    or "all"."""
    from mirasc.runtime.wy_chunk import KERNELS

    work = []
    for spec in specs:
        names = ["_forward_kernel", "_backward_kernel"] if kernels != "chunked" else []
        if kernels != "fused" and has_wy(spec):
            names += [f"wy:{name}" for name in KERNELS]
        if kernels != "fused" and has_dual(spec):
            names += ["dual:forward", "dual:state_bwd", "dual:chunk_bwd"]
        if kernels != "fused" and has_mlp(spec):
            kind = "deep" if has_deep(spec) else "mlp"
            output = [] if kind == "deep" else ["mlp:output"]
            reads = [] if kind == "deep" else ["mlp:reads", "mlp:reads_bwd"]
            names += [f"{kind}:forward", *output, f"{kind}:decode", *reads, f"{kind}:backward"]
        if kernels != "fused" and has_kl(spec):
            kl = backend_of(spec).kl
            output = ["kl:output"] if kl.output_kernel is not None else []
            decode = ["kl:decode"] if kl.streaming else []
            names += ["kl:forward", *output, *decode, "kl:backward"]
        work += [(spec, name, D) for D in (sizes or WIDE.get(spec, (64,))) for name in names]
    return work


def compile_job(spec: str, kernel: str, D: int) -> Figures:
    """One row: a fused kernel, a chunked WY kernel (`wy:<name>`), a dual-form one (`dual:`,
    `mlp:`, `deep:`) or a kl memory's chunked one (`kl:`)."""
    if kernel.startswith("wy:"):
        return wy_measure(spec, kernel[3:], D)
    if kernel.startswith("dual:"):
        return dual_measure(spec, kernel[5:], D)
    if kernel.startswith(("mlp:", "deep:")):
        return mlp_measure(spec, kernel.split(":")[1], D)
    if kernel.startswith("kl:"):
        return kl_measure(spec, kernel[3:], D)
    return measure(spec, kernel, D)


def compile_fresh(job: tuple[str, str, int]) -> Figures:
    """`compile_job` in a worker process, with its own throwaway cache."""
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, str(ROOT))
    with fresh_compiles():
        return compile_job(*job)


def compile_all(work: list[tuple[str, str, int]], processes: int) -> list[Figures]:
    """Every job's row, in order; compiles are CPU-bound and independent, so `processes` > 1
    runs them side by side (each in a fresh interpreter: Triton's compiler is not fork-safe)."""
    if processes <= 1:
        with fresh_compiles():
            return [compile_job(*job) for job in progress(work)]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        return list(progress_of(pool.map(compile_fresh, work), work))


def progress_of(rows, work: list[tuple]):
    """Rows as they arrive, under a progress bar on stderr."""
    from tqdm import tqdm

    yield from tqdm(rows, total=len(work), unit="kernel", file=sys.stderr)


def table(rows: list[Figures], markdown: bool) -> str:
    """The rows as aligned text columns, or as a Markdown table."""
    cells = [list(COLUMNS)] + [[str(getattr(r, c)) for c in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join(" --- " for _ in COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


# flash-linear-attention's chunk_gated_delta_rule kernels that carry the state across chunks (the
# counterparts of our recurrent kernels) and its output kernel, as of fla 0.6.0: (module, kernel,
# pointers and their dtypes, one configuration from its autotune list: the autotuner picks on a GPU,
# so the figures are those of this configuration). Optional pointers the op passes as None are None
# constants, as Triton specialises them.
FLA_KERNELS = {
    "fwd_h": ("fla.ops.common.chunk_delta_h", "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
              dict(k="bf16", v="bf16", w="bf16", v_new="bf16", g="fp32", h="bf16", h0="fp32",
                   ht="fp32"),
              dict(BV=64, num_warps=4, num_stages=2)),
    "bwd_dhu": ("fla.ops.common.chunk_delta_h", "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64",
                dict(q="bf16", k="bf16", w="bf16", g="fp32", dht="fp32", dh0="fp32", do="bf16",
                     dh="bf16", dv="bf16", dv2="bf16"),
                dict(BV=64, num_warps=4, num_stages=2)),
    "fwd_o": ("fla.ops.common.chunk_o", "chunk_fwd_kernel_o",
              dict(q="bf16", k="bf16", v="bf16", h="bf16", g="fp32", o="bf16"),
              dict(BK=64, BV=64, num_warps=4, num_stages=3)),
}  # fmt: skip
FLA_FLAGS = dict(USE_G=True, USE_GK=False, USE_G_GAMMA=False, USE_INITIAL_STATE=True,
                 STORE_FINAL_STATE=True, SAVE_NEW_VALUE=True, USE_FINAL_STATE_GRADIENT=True,
                 STATE_V_FIRST=False, IS_VARLEN=False)  # fmt: skip


def fla_measure(name: str, D: int) -> Figures:
    """Compile one of FLA_KERNELS at K = V = D, 16 heads, chunks of 64, bf16 inputs."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    module, kernel_name, pointers, config = FLA_KERNELS[name]
    kernel = getattr(importlib.import_module(module), kernel_name)
    while not isinstance(kernel, JITFunction):  # under its autotune and heuristics wrappers
        kernel = kernel.fn
    options = {k: config[k] for k in ("num_warps", "num_stages")}
    consts = dict(
        FLA_FLAGS,
        H=16,
        HV=16,
        K=D,
        V=D,
        BT=64,
        **{k: config[k] for k in ("BK", "BV") if k in config},
    )
    types, constexprs = {}, {}
    for arg in kernel.arg_names:
        if arg in pointers:
            types[arg] = f"*{pointers[arg]}"
        elif arg in ("T", "scale"):
            types[arg] = "i32" if arg == "T" else "fp32"
        else:  # a constant, or an optional pointer the op leaves None
            types[arg], constexprs[arg] = "constexpr", consts.get(arg)
    start = time.perf_counter()
    compiled, log = compile_logged(ASTSource(kernel, types, constexprs), options)
    label = f"{name} BV={consts['BV']} stages={options['num_stages']}"
    return figures_of("fla", label, D, compiled, log, time.perf_counter() - start)


def fla_rows(specs: list[str], sizes: list[int] | None) -> list[Figures]:
    """flash-linear-attention's figures beside gated_deltanet's, where it is importable; it is
    never a dependency, so its absence is said and skipped."""
    if "gated_deltanet" not in specs:
        return []
    try:
        import fla  # noqa: F401
    except ImportError:
        print("fla (flash-linear-attention) is not importable: its kernels are not compared")
        return []
    work = [(n, D) for D in (sizes or WIDE["gated_deltanet"]) for n in FLA_KERNELS]
    return [fla_measure(name, D) for name, D in progress(work)]


def progress(work: list[tuple]):
    """The work items under a progress bar on stderr that names the one compiling."""
    from tqdm import tqdm

    with tqdm(work, unit="kernel", file=sys.stderr) as bar:
        for item in bar:
            bar.set_description(" ".join(str(part).strip("_") for part in item))
            yield item


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_static.py",
        description="Compile the generated Triton kernels for sm_90 without a GPU and print "
        "their registers, spills, stack, shared memory and tensor-core instructions.",
    )
    parser.add_argument(
        "--specs", nargs="*", default=SHIPPED, metavar="NAME",
        help="packages under generated/ (default: every shipped spec; compile your own there "
        "first: mirasc compile my.miras -o generated)",
    )  # fmt: skip
    parser.add_argument(
        "--D", nargs="+", type=int, metavar="N",
        help="head sizes for every spec (default: 64; 64 and 128 for deltanet, gated_deltanet)",
    )  # fmt: skip
    parser.add_argument(
        "--kernels", choices=("all", "fused", "chunked"), default="all",
        help="the fused recurrent pair, the chunked kernels (WY or dual form, where planned), or both",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="compile N kernels at a time (processes)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Compile, print the table, and write the JSON if asked."""
    args = parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter's kernels cannot be compiled
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    rows = compile_all(jobs(args.specs, args.D, args.kernels), args.jobs)
    if args.kernels != "chunked":
        with fresh_compiles():
            rows += fla_rows(args.specs, args.D)
    print(table(rows, args.markdown))
    print(f"\n{len(rows)} kernels compiled for sm_90 in {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
