"""Scale-out on PyTorch's own machinery: DDP and FSDP under torchrun (gloo, 2 CPU ranks) give
the single-process gradients; torch.compile gives the eager outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "distributed"))

from gradients import batch, build  # noqa: E402

from mirasc.training.trainer import masked_metrics  # noqa: E402


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_give_single_process_gradients(shipped, tmp_path, mode):
    out = tmp_path / f"{mode}.pt"
    # --standalone: a rendezvous on a free port, so runs back to back never share port 29500
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "distributed" / "gradients.py"), mode, str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = torch.load(out)
    model = build(shipped["titans"].Layer)
    masked_metrics(model(batch()[0]), batch()[1])[0].backward()
    names = [n for n, p in model.named_parameters()]
    assert sorted(distributed) == sorted(names)
    for name, p in model.named_parameters():
        err = ((distributed[name] - p.grad).norm() / p.grad.norm()).item()
        assert err < 1e-12, (name, err)  # fp64, the same sums in another order


def test_torch_compile_matches_eager(shipped):
    from mirasc.training.models import MemoryLM, ModelConfig

    torch.manual_seed(0)
    model = MemoryLM(shipped["gated_deltanet"].Layer, ModelConfig(vocab=16, hidden=16, layers=1))
    x = torch.randint(0, 16, (2, 12))
    compiled = torch.compile(model)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
