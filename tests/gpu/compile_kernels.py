"""Compile generated packages' Triton kernels for a Hopper GPU (sm_90) without one: the
interpreter accepts code a GPU compiler refuses (loop-carried types, shapes), this does not.

usage: python compile_kernels.py PACKAGE_DIR...   (run without TRITON_INTERPRET)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_static import signature  # noqa: E402  (the one definition of a kernel's signature)


def compile_backend(backend, Dk: int, Dv: int, dtype: str, continuing: bool) -> None:
    meta = backend.fused.meta(Dk, Dv, 1 if continuing else 0)
    for kernel in (backend._forward_kernel, backend._backward_kernel):
        source = ASTSource(fn=kernel, signature=signature(kernel, meta, dtype), constexprs=meta)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel


def compile_dual(backend, D: int) -> None:
    """The chunked dual-form kernels, where the spec has them, as they launch for bf16 inputs."""
    import triton.language as tl

    for name in ("forward", "state_bwd", "chunk_bwd"):
        kernel = getattr(backend, f"_dual_{name}_kernel")
        meta = backend.dual.meta(kernel, D, D, tl.bfloat16)
        source = ASTSource(fn=kernel, signature=signature(kernel, meta, "bf16"), constexprs=meta)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel


def compile_mlp(backend, D: int) -> None:
    """The chunked dual-form kernels of an MLP memory, as they launch for bf16 inputs: the
    forward kernel as training (the state pass alone) and decoding (reads included, a continued
    chunk) launch it, the reads kernel for the outputs and for the backward pass, and the
    backward pass's other two."""
    import triton.language as tl

    mlp = backend.mlp
    launches = [
        (mlp.forward_kernel, {"SAVE": True, "CONT": False, "READS": False}),
        (mlp.forward_kernel, {"SAVE": False, "CONT": True, "READS": True}),
        (mlp.reads_kernels[0], {"OUTPUT": True}),
        (mlp.reads_kernels[0], {"OUTPUT": False}),
        (mlp.reads_kernels[1], {}),
        (mlp.backward_kernel, {}),
    ]
    for kernel, flags in launches:
        meta = mlp.meta(D, D, tl.bfloat16, kernel is not mlp.forward_kernel) | flags
        source = ASTSource(fn=kernel, signature=signature(kernel, meta, "bf16"), constexprs=meta)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        sys.path.insert(0, str(path.parent))
        backend = importlib.import_module(f"{path.name}.triton_backend")
        chunked = backend.CHUNK > 1
        compile_backend(backend, 8, 8, "bf16", continuing=False)
        if chunked:
            compile_backend(backend, 8, 8, "fp32", continuing=True)
        if hasattr(backend, "dual"):
            compile_dual(backend, 16)
        if hasattr(backend, "mlp"):
            compile_mlp(backend, 16)
        print(path.name, "compiled", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
