"""benchmarks/gpu_static.py, the static GPU-quality gate: on one small linear spec it compiles
for sm_90 without a GPU and its table's columns parse; the chunked WY kernels of the delta rule
use tensor cores and spill nothing at the head sizes they are tuned for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton
from test_kl_chunk import CLIPPED_KL, MEMORA_ARCH

ROOT = Path(__file__).resolve().parents[1]
needs_nvidia = pytest.mark.skipif(
    "nvidia" not in triton.backends.backends, reason="this triton has no NVIDIA backend"
)


def static_rows(tmp_path: Path, *args: str) -> tuple[list, str]:
    """benchmarks/gpu_static.py with `args` in a fresh process without TRITON_INTERPRET (the
    interpreter's functions cannot be compiled): its JSON rows and its standard output."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "static.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_static.py"), *args, "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_loop_spills_counts_spill_instructions_in_innermost_loops_only(monkeypatch):
    """A listing with a prologue spill, an outer loop with a reload in its own body and an inner
    loop with a predicated reload and a 64-bit store: only the inner loop's two count."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_static

    sass = """
        /*0000*/                   STL [R1+0x4], R15 ;
        /*0010*/                   MOV R2, R3 ;
        /*0020*/                   LDL R117, [R1] ;
        /*0030*/                   FADD R4, R4, R5 ;
        /*0040*/              @!P2 LDL.64 R56, [R1+0x8] ;
        /*0050*/                   STL.64 [R1+0x10], R16 ;
        /*0060*/              @!P0 BRA 0x30 ;
        /*0070*/                   LDL R9, [R1+0x4] ;
        /*0080*/              @!P1 BRA 0x20 ;
        /*0090*/                   EXIT ;
    """
    assert gpu_static.loop_spills(sass) == 2


@needs_nvidia
def test_the_static_table_parses(tmp_path):
    """deltanet at D=16: both kernels, every column a number, and the JSON says the same."""
    json_rows, stdout = static_rows(
        tmp_path, "--specs", "deltanet", "--D", "16", "--kernels", "fused", "--markdown"
    )
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["spec", "kernel", "D", "warps"] and "registers" in header
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]  # fmt: skip
    assert [r["kernel"] for r in rows] == ["_forward_kernel", "_backward_kernel"]
    for row in rows:
        numbers = {k: float(v) for k, v in row.items() if k not in ("spec", "kernel")}
        assert 0 < numbers["registers"] <= 255 and numbers["D"] == 16
        assert min(numbers.values()) >= 0
    assert [r["registers"] for r in json_rows] == [int(r["registers"]) for r in rows]


@needs_nvidia
def test_the_recurrent_kernels_of_a_wide_linear_memory_do_not_spill(tmp_path):
    """gated_deltanet's recurrent pair at D = 128, as decoding launches it: with the value
    columns split across programs (plan.recurrent_value_tiles) each holds a [128, 32] slice of
    the state, and neither kernel spills (holding all of it, the backward spilled 2 KB)."""
    rows = static_rows(tmp_path, "--specs", "gated_deltanet", "--D", "128", "--kernels", "fused")[0]
    assert [r["kernel"] for r in rows] == ["_forward_kernel", "_backward_kernel"]
    for r in rows:
        assert r["spill_stores"] == r["spill_loads"] == 0, r


@needs_nvidia
def test_the_chunked_wy_kernels_use_tensor_cores_and_do_not_spill(tmp_path):
    """gated_deltanet's chunked WY kernels (the decay-gated variant; deltanet's differ only by
    a constexpr) at D = 64 and 128, bf16 inputs, as its training-length calls launch them: each
    issues wgmma or mma and spills no byte (wy_chunk.launch_options and VALUE_TILE are tuned for
    this). Only these kernels are compiled."""
    rows = static_rows(
        tmp_path, "--specs", "gated_deltanet", "--D", "64", "128", "--kernels", "chunked",
        "--jobs", "2",
    )[0]  # fmt: skip
    assert len(rows) == 12 and all(r["kernel"].startswith("wy:") for r in rows)
    for r in rows:
        where = f"{r['kernel']} D={r['D']}"
        assert r["mma"] + r["wgmma"] > 0 and r["sass_mma"] > 0, f"{where}: no tensor-core op"
        assert r["spill_stores"] == r["spill_loads"] == 0, f"{where} spills: {r}"


@needs_nvidia
def test_the_chunked_dual_form_kernels_use_tensor_cores(tmp_path):
    """linear_attention's chunked dual-form kernels at D = 64, bf16 inputs, as its
    training-length calls launch them: each issues wgmma or mma; the forward kernel and the
    reverse state pass spill nothing. The parallel per-chunk adjoint kernel still spills
    (~0.5 KB per thread at D = 64, chunk 64: it holds W, its adjoint and eight chunk tiles), a
    figure docs/triton.md states; this test keeps it from growing past 1 KB."""
    found = static_rows(
        tmp_path, "--specs", "linear_attention", "--D", "64", "--kernels", "chunked"
    )
    rows = {r["kernel"]: r for r in found[0]}
    assert set(rows) == {"dual:forward", "dual:state_bwd", "dual:chunk_bwd"}
    for name, r in rows.items():
        assert r["mma"] + r["wgmma"] > 0 and r["sass_mma"] > 0, f"{name}: no tensor-core op"
        limit = 1024 if name == "dual:chunk_bwd" else 0
        assert r["spill_stores"] <= limit, f"{name} spills: {r}"


@needs_nvidia
def test_the_mlp_chunked_kernels_use_tensor_cores_and_do_not_spill(tmp_path):
    """Titans' and TTT-MLP's chunked kernels at D = 64, bf16 inputs, as training-length calls
    launch them (forward: the state pass, then every chunk's outputs at once), and the forward
    kernel as decoding launches it (a continued chunk, its anchor, the reads in the same
    pass): every kernel issues tensor-core instructions and none spills a byte. The backward
    pass is three kernels for this (two parallel over chunks for the reads' reverse, then the
    state pass); as one kernel it spilled 124 B (titans) and 24 B."""
    found = static_rows(
        tmp_path, "--specs", "titans", "ttt_mlp", "--D", "64", "--kernels", "chunked", "--jobs",
        "2",
    )  # fmt: skip
    rows = {(r["spec"], r["kernel"]): r for r in found[0]}
    assert set(rows) == {(s, f"mlp:{k}") for s in ("titans", "ttt_mlp")
                         for k in ("forward", "output", "decode", "reads", "reads_bwd",
                                   "backward")}  # fmt: skip
    for where, r in rows.items():
        assert r["mma"] + r["wgmma"] > 0 and r["sass_mma"] > 0, f"{where}: no tensor-core op"
        assert r["spill_stores"] == r["spill_loads"] == r["stack"] == 0, f"{where} spills: {r}"


SPEC_VARIANTS = {  # the chunked kernels' optional features, which no shipped spec has at once
    "moneta_clip": """memory moneta_clip {
    architecture = mlp(depth: 2, expansion: 4, activation: gelu, residual: true, norm: layernorm)
    bias = lp(p: 3)
    retention = lq(q: 4, keep: a)
    algorithm = gd(lr: eta)
    chunk = 16
    clip = 1.0
    gate eta = 0.1 * sigmoid(z)
    gate a = sigmoid(z)
}
""",
    "ttt_linear_first_clip": """memory ttt_linear_first_clip {
    architecture = linear(residual: true, norm: layernorm)
    bias = huber(delta: d)
    retention = decay(alpha, first: true)
    algorithm = gd(lr: eta)
    chunk = 16
    clip = 1.0
    gate eta = 0.1 * sigmoid(z)
    gate alpha = 0.01 * sigmoid(z)
    gate d = softplus(z)
}
""",
    "linear_lq": """memory linear_lq {
    architecture = linear(residual: true, norm: layernorm)
    bias = lp(p: 3)
    retention = lq(q: 4, keep: a)
    algorithm = gd(lr: eta)
    chunk = 16
    gate eta = 0.1 * sigmoid(z)
    gate a = sigmoid(z)
}
""",
    "clipped_kl": CLIPPED_KL.replace("MEMORY", MEMORA_ARCH),  # MEMORA with clip
    "deep_kl": CLIPPED_KL.replace("MEMORY", MEMORA_ARCH.replace("depth: 2", "depth: 3")).replace(
        "clipped_kl", "deep_kl"
    ),
    "deep_first": """memory deep_first {
    architecture = mlp(depth: 3, expansion: 4, activation: silu, residual: true, norm: layernorm)
    bias = huber(delta: d)
    retention = decay(alpha, first: true)
    algorithm = gd(lr: eta)
    chunk = 16
    gate eta = 0.1 * sigmoid(z)
    gate alpha = 0.01 * sigmoid(z)
    gate d = softplus(z)
}
""",
    "deep_lq": """memory deep_lq {
    architecture = mlp(depth: 3, expansion: 4, activation: gelu, residual: true, norm: layernorm)
    bias = lp(p: 3)
    retention = lq(q: 4, keep: a)
    algorithm = gd(lr: eta)
    chunk = 16
    gate eta = 0.1 * sigmoid(z)
    gate a = sigmoid(z)
}
""",
    "deep_momentum": """memory deep_momentum {
    architecture = mlp(depth: 3, expansion: 4, activation: silu, residual: true, norm: layernorm)
    bias = l2
    retention = decay(alpha)
    algorithm = momentum(lr: eta, momentum: beta)
    chunk = 16
    gate eta = 0.1 * sigmoid(z)
    gate alpha = 0.01 * sigmoid(z)
    gate beta = 0.9 * sigmoid(z)
}
""",
}


@needs_nvidia
def test_the_chunked_kernels_compile_with_every_feature(tmp_path):
    """The interpreter runs code that Triton's compiler can still reject (a variable changing
    shape across a loop, say), so the chunked kernels of three specs with every optional feature
    (lq, clip, decay applied first, residual and LayerNorm reads, a loss gate), MEMORA's kl
    pair with clip and four three-layer MLPs (MEMORA's among them) are compiled for sm_90 as
    training-length calls launch them: they compile and use tensor cores, the kl forward kernels
    spill nothing (the state pass and the outputs as training launches them, and the forward
    kernel as decoding does), and the deep kernels spill nothing inside their loops."""
    specs = []
    for name, text in SPEC_VARIANTS.items():
        (tmp_path / f"{name}.miras").write_text(text)
        specs.append(str(tmp_path / f"{name}.miras"))
    subprocess.run([sys.executable, "-m", "mirasc", "compile", *specs, "-o",
                    str(tmp_path / "generated")], check=True, capture_output=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = [("moneta_clip", f"mlp:{k}", 64)
            for k in ("forward", "output", "decode", "reads", "reads_bwd", "backward")]  # fmt: skip
    jobs += [("clipped_kl", f"kl:{k}", 64) for k in ("forward", "output", "decode", "backward")]
    jobs += [(spec, f"dual:{k}", 64) for spec in ("ttt_linear_first_clip", "linear_lq")
             for k in ("forward", "state_bwd", "chunk_bwd")]  # fmt: skip
    jobs += [(spec, f"deep:{k}", 64) for spec in ("deep_first", "deep_momentum", "deep_lq")
             for k in ("forward", "backward")]  # fmt: skip
    jobs += [("deep_kl", f"kl:{k}", 64) for k in ("forward", "backward")]
    code = (
        "import dataclasses, json, sys; sys.path[:0] = sys.argv[1:]; import gpu_static; "
        f"rows = gpu_static.compile_all({jobs!r}, 2); "
        "print(json.dumps([dataclasses.asdict(r) for r in rows]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks"), str(tmp_path), str(ROOT)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == len(jobs)
    for row in rows:
        assert row["sass_mma"] > 0 and 0 < row["registers"] <= 255, row
    kl = {row["kernel"]: row for row in rows if row["spec"] == "clipped_kl"}
    # MEMORA's recurrent pair spills 2.6 and 27 KB per thread; docs/triton.md states these figures
    # (its chunked backward: 152 B, with clip 336 B)
    for name in ("kl:forward", "kl:output", "kl:decode"):  # decode: a continued chunk, its anchor
        assert kl[name]["spill_stores"] == kl[name]["spill_loads"] == 0, kl
    assert kl["kl:backward"]["spill_stores"] <= 384, kl
    # three-layer MLPs (Titans' memory with momentum; with decay applied first and a loss
    # gate; MONETA's lq; MEMORA's kl with clip): their intermediates live in scratch buffers,
    # so nothing spills inside a loop
    deep = [row for row in rows if row["kernel"].startswith("deep:") or row["spec"] == "deep_kl"]
    assert len(deep) == 8 and all(row["loop_spills"] == 0 for row in deep), deep
