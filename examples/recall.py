"""A compiled memory layer learning associative recall, written out in plain PyTorch (no trainer).

Each sequence lists key-value pairs, then asks for some keys again; the model must answer each
query with the value stored with its key (a small MQAR, Zoology's recipe). The only token mixer
is the generated memory layer, so accuracy above chance means the memory stores and recalls.
`--device` and `--precision` pick where (auto: CUDA when a GPU is visible) and how (fp32, or bf16
autocast with fp32 parameters and memory state) it trains.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirasc.training.device import (  # noqa: E402
    DEVICES,
    PRECISIONS,
    DeviceUnavailable,
    autocast,
    resolve_device,
    to_device,
)


def recall_batch(batch: int, pairs: int, queries: int, keys: int, values: int, g: torch.Generator):
    """Tokens [B, 2*pairs + queries] and targets (-100 where nothing is asked)."""
    k = torch.stack([torch.randperm(keys, generator=g)[:pairs] for _ in range(batch)])
    v = torch.randint(keys, keys + values, (batch, pairs), generator=g)
    ask = torch.randint(0, pairs, (batch, queries), generator=g)
    context = torch.stack([k, v], dim=-1).reshape(batch, 2 * pairs)
    tokens = torch.cat([context, k.gather(1, ask)], dim=1)
    targets = torch.full_like(tokens, -100)
    targets[:, 2 * pairs :] = v.gather(1, ask)
    return tokens, targets


class RecallModel(nn.Module):
    """Embedding -> [memory layer + MLP] x depth -> logits, pre-norm residual blocks."""

    def __init__(self, layer_cls, vocab: int, hidden: int, heads: int, depth: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.RMSNorm(hidden),
                        "mixer": layer_cls(hidden, heads),
                        "norm2": nn.RMSNorm(hidden),
                        "mlp": nn.Sequential(
                            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)
                        ),
                    }
                )
            )
        self.norm = nn.RMSNorm(hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h = self.embed(tokens)
        for b in self.blocks:
            h = h + b["mixer"](b["norm1"](h))
            h = h + b["mlp"](b["norm2"](h))
        return self.head(self.norm(h))


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="deltanet", help="a compiled package in generated/")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when visible")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: autocast")
    return p.parse_args(argv)


def accuracy(model, test, precision) -> float:
    """Held-out recall: the share of asked positions answered with the stored value."""
    with torch.no_grad(), precision():
        logits = model(test[0])
    mask = test[1] != -100
    return (logits.argmax(-1)[mask] == test[1][mask]).float().mean().item()


def main(argv=None) -> int:
    args = parse_args(argv)

    from tqdm import tqdm

    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    precision = partial(autocast, device, args.precision)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    package = importlib.import_module(f"generated.{args.spec}")
    keys = values = 32
    model = RecallModel(package.Layer, keys + values, args.hidden, args.heads, args.depth)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(0.1, 2 / args.steps)  # OneCycleLR needs a warm-up of at least two steps
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.steps, pct_start=warmup
    )
    g = torch.Generator().manual_seed(args.seed)
    test = recall_batch(
        512, args.pairs, args.queries, keys, values, torch.Generator().manual_seed(10**6)
    )
    test = tuple(t.to(device) for t in test)
    print(
        f"{package.SPEC.splitlines()[1]}  layer={package.Layer.__name__}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; chance = {1 / values:.1%}"
    )
    start = time.time()
    bar = tqdm(range(1, args.steps + 1), unit="step")
    history = []
    for step in bar:
        batch = recall_batch(args.batch, args.pairs, args.queries, keys, values, g)
        tokens, targets = (to_device(t, device) for t in batch)
        with precision():
            logits = model(tokens).float()
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            acc = accuracy(model, test, precision)
            history.append((step, loss.item(), acc))
            bar.set_postfix(loss=f"{loss.item():.3f}", recall=f"{acc:.1%}")
            tqdm.write(
                f"step {step:5d}  loss {loss.item():.3f}  held-out recall accuracy {acc:.1%}"
            )
    print(
        f"done in {time.time() - start:.0f} s: recall accuracy {history[0][2]:.1%} -> {history[-1][2]:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
