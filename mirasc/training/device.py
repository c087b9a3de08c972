"""Where and in what precision training runs: `--device {auto,cpu,cuda}` and
`--precision {fp32,bf16}`, shared by `mirasc train` and examples/recall.py."""

from __future__ import annotations

import contextlib
import os

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine."""


def local_rank() -> int:
    """This process's GPU index under torchrun (0 outside it)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str, rank: int | None = None) -> torch.device:
    """The torch device for `name`: `auto` is CUDA when a GPU is visible, else the CPU; under
    torchrun each process takes the GPU of its local rank. `cuda` without a GPU is an error
    rather than a silent fall-back, so that a GPU run never quietly trains on the CPU."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}"
        )
        raise DeviceUnavailable(f"--device cuda, but torch ({build}) sees no CUDA GPU")
    index = local_rank() if rank is None else rank
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"local rank {index} needs GPU {index}, but only {torch.cuda.device_count()} are visible"
        )
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: `bf16` runs matrix products in bfloat16 under
    torch.autocast (CUDA and CPU alike) while parameters, optimizer state and the memories'
    recurrent state stay fp32 (the generated ops accumulate bf16 inputs in fp32); `fp32` is
    plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch made on the CPU, copied to `device` once; from pinned memory on CUDA so that the
    copy overlaps the previous step's work."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
