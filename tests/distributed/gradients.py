"""Run under torchrun: DDP (or FSDP) gradients of a MemoryLM on each rank's half of a fixed
batch, saved by rank 0 for the test to compare with one process on the whole batch."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from mirasc.training import data
from mirasc.training.models import MemoryLM, ModelConfig
from mirasc.training.trainer import masked_metrics


def build(layer_cls):
    torch.manual_seed(0)
    return MemoryLM(layer_cls, ModelConfig(vocab=16, hidden=16, layers=1, heads=2)).double()


def batch():
    return data.selective_copy(4, 24, 4, 16, torch.Generator().manual_seed(5))


def main() -> None:
    import mirasc

    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    layer = mirasc.compile("specs/titans.miras").Layer
    model = build(layer)
    x, y = batch()
    half = x.shape[0] // world
    x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        masked_metrics(wrapped(x), y)[0].backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        masked_metrics(model(x), y)[0].backward()
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()  # no rank tears gloo down while the other still uses it
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: after an FSDP run, a C++ destructor at exit
    # finds a gloo thread still joinable and aborts ("terminate called without an active
    # exception", no Python frame), about 1 run in 30 on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
