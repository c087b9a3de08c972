"""How a memory on the probability simplex reads, and how much one pass memorizes, per way of
reading the row-stochastic weights W (MEMORA's kl retention).

The memory is memora's: x + LN(W2^T gelu(W1^T x)), hidden 4 D, the layer's starting rows
softmax(randn / sqrt(in)). Each read of W is a choice of the matrices the layer multiplies by:
- plain:   W itself (entries near 1/out: each output is close to an average of the inputs);
- scaled:  out * W (the same up to a temperature; a uniform row reads as all ones);
- centred: out * W - 1 (a uniform row reads as zero, as the other memories' zero start).

Per read it prints the spread of the first layer's pre-activations, the pre-LayerNorm output's
spread across outputs, the size of the memory's Jacobian in x, and, writing N random (unit key,
value) pairs token by token with the exact mirror step W = softmax_rows(a log W - eta g), the
recall error left afterwards as a fraction of the error before, over a grid of eta (fp64).
It evaluates the memory directly in torch, apart from the compiler.

    python benchmarks/simplex_read.py [--dim 32] [--pairs 8] [--batch 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.nn.functional import gelu, normalize

READS = {
    "plain": lambda w: w,
    "scaled": lambda w: w.shape[-1] * w,
    "centred": lambda w: w.shape[-1] * w - 1.0,
}
ETAS = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.5)


def memory(weights: list, x: torch.Tensor, read) -> tuple:
    """(f(W; x), first-layer pre-activations, pre-LayerNorm output) for x [.., n, D]."""
    w1, w2 = (read(w) for w in weights)
    z1 = x @ w1
    m = gelu(z1) @ w2
    centred = m - m.mean(-1, keepdim=True)
    out = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
    return x + out, z1, m


def one_pass(weights: list, k, v, eta: float, read, keep: float = 0.999) -> float:
    """Recall error after writing every (k_t, v_t) once, over the error before."""
    before = (memory(weights, k, read)[0] - v).pow(2).sum(-1).mean()
    for t in range(k.shape[-2]):
        leaves = [w.detach().requires_grad_(True) for w in weights]
        y = memory(leaves, k[:, t : t + 1], read)[0]
        grads = torch.autograd.grad(0.5 * (y - v[:, t : t + 1]).pow(2).sum(), leaves)
        weights = [
            torch.softmax(keep * torch.log(w) - eta * g, dim=-1).detach()
            for w, g in zip(leaves, grads, strict=True)
        ]
    after = (memory(weights, k, read)[0] - v).pow(2).sum(-1).mean()
    return float(after / before)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    f64, D, hidden = torch.float64, args.dim, 4 * args.dim
    k = normalize(torch.randn(args.batch, args.pairs, D, dtype=f64), dim=-1)
    v = 0.5 * torch.randn(args.batch, args.pairs, D, dtype=f64)
    logits = [torch.randn(D, hidden, dtype=f64) / D**0.5, torch.randn(hidden, D, dtype=f64)]
    logits[1] = logits[1] / hidden**0.5
    weights = [torch.softmax(w, dim=-1).expand(args.batch, *w.shape) for w in logits]
    print("| read | std of W1^T x | std of pre-LN output | ||d(f - x)/dx|| / sqrt(D) | "
          + " | ".join(f"eta {e:g}" for e in ETAS) + " |")  # fmt: skip
    print("| --- " * (4 + len(ETAS)) + "|")
    for name, read in READS.items():
        _, z1, m = memory(weights, k, read)
        x = k[0, 0]
        jac = torch.autograd.functional.jacobian(
            lambda x, read=read: memory([w[0] for w in weights], x[None], read)[0][0] - x, x
        )
        errors = " | ".join(f"{one_pass(weights, k, v, e, read):.3f}" for e in ETAS)
        print(
            f"| {name} | {z1.std():.4f} | {m.std(-1).mean():.2e} | {jac.norm() / D**0.5:.3f} "
            f"| {errors} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
