"""An outside reference point for the recall table: titans-pytorch's `NeuralMemory` as the token
mixer of mirasc's `MemoryLM`, trained by `mirasc train`'s `Trainer` (same MQAR data and seed,
AdamW, warm-up and cosine schedule, gradient clipping, evaluation), so its held-out accuracy and
seconds per step compare with a row of the table.

titans-pytorch is installed only for this benchmark (`pip install titans-pytorch==0.5.5`, or the
`reference` extra); neither mirasc nor its tests need it. Without it the script says so in one
line and exits with status 2.

    python benchmarks/titans_pytorch_reference.py --seq-len 128 [--seed 0] [--steps 400]
        [--no-short-conv] [--max-grad-norm X] [--out runs/titans_pytorch]

The memory is configured as close to `specs/titans.miras` as `NeuralMemory` allows (chunk 16,
2 heads of 32, a 2-layer MLP memory of expansion 4 wrapped in its residual LayerNorm, momentum,
data-dependent step size, momentum and decay); its other settings keep their defaults. What
still differs is listed in `DIFFERENCES` (printed with `--differences`) and in the README.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTALL = "pip install titans-pytorch==0.5.5"
CONV_SIZE = 4  # the kernel of a mirasc layer's short convolutions (docs/semantics.md, §4.5)

DIFFERENCES = """\
Matched: chunk 16; 2 heads of 32; memory = x + LN(MLP(x)) with a 2-layer MLP of expansion 4 and
no biases (its MemoryMLP inside its ResidualNorm); momentum with data-dependent step size,
momentum and decay; a short causal convolution (kernel 4, SiLU) ahead of the memory (optional:
--no-short-conv), because mirasc's layer has one on q, k and v, which gives one layer recall's
second hop (finding the key, then reading the token after it).
Still different in titans-pytorch 0.5.5 (its defaults, which it does not let us change or which
we keep):
- gradients: without batch_size, every chunk's gradient in a call is taken at the weights the
  call starts from (one mini-batch over the whole sequence, the chunks combined by its momentum
  and decay scan); mirasc takes each chunk's at the chunk's start state (batch_size = 16 would
  match, committing the weights after every chunk in a Python loop; kept at its default here);
- reads: a token reads the memory as it was at the end of the previous chunk (the last token of
  a chunk sees its own chunk); mirasc reads after each token's write, inside the chunk too;
- momentum and decay are computed once per chunk from the chunk's mean input; the step size per
  token. mirasc computes all three per token;
- momentum = sigmoid(z) (up to 1); mirasc's is 0.9 * sigmoid(z);
- step size = max_lr * sigmoid(z) with max_lr = 1.0 (its default) on a loss averaged over the 32
  dimensions, i.e. 1/16 of mirasc's 0.5 * sum: at most 0.0625 in mirasc's units against 0.1;
- retention starts at sigmoid(linear) ~ 0.5 decay per chunk (default Linear init: every chunk
  halves the memory, the initial weights included); mirasc's retention gate starts at
  alpha = 0.001 per token, 1 - 0.999^16 = 0.016 per chunk (--init-decay 0.016 sets that start);
- memory MLP activation GELU (its MemoryMLP); mirasc's titans uses SiLU;
- the LayerNorm's gain is part of the memory (written at test time, no bias); mirasc's LayerNorm
  gain and bias are ordinary (outer) parameters;
- the memory's initial weights: xavier-uniform, the same for both heads, learned per head;
  mirasc: randn / sqrt(in) per head, learned;
- q, k, v: bias-free projections of an RMSNorm of the input (its pre_rmsnorm), no normalisation
  of q and k (qk_rmsnorm off by default); mirasc L2-normalises q and k;
- output: a per-head sigmoid gate from the input, no per-head RMSNorm (post_rmsnorm off by
  default), then the heads' projection; mirasc: per-head RMSNorm, SiLU(Linear(x)) gate, projection;
- no soft clamp of the memory's gradient norm by default (max_grad_norm None; --max-grad-norm
  sets it); mirasc's titans has no clip either.
"""


def missing() -> str | None:
    """None when titans-pytorch imports, else the one-line message this script prints."""
    try:
        import titans_pytorch  # noqa: F401
    except ImportError as e:
        return f"titans-pytorch is not installed ({e}); install it for this benchmark: {INSTALL}"
    return None


def mixer_class() -> type:
    """The token mixer class, built on first use so that the script imports torch and
    titans-pytorch only once it knows the package is there."""
    import torch
    import torch.nn.functional as F
    from titans_pytorch import MemoryMLP, NeuralMemory
    from torch import nn

    class TitansPytorchMixer(nn.Module):
        """titans-pytorch's `NeuralMemory` with a mirasc memory layer's interface, `(hidden,
        heads)` and `forward(x, state=None, use_cache=False)`, optionally after a depthwise causal
        convolution with SiLU (a mirasc layer's short convolution, here on the input because the
        memory derives q, k and v inside itself). Training and evaluation only: no decoding."""

        def __init__(
            self,
            hidden: int,
            heads: int,
            *,
            chunk: int = 16,
            expansion: float = 4.0,
            short_conv: bool = True,
            max_grad_norm: float | None = None,
            init_decay: float | None = None,
        ):
            super().__init__()
            head_dim = hidden // heads
            self.conv = (
                nn.Conv1d(hidden, hidden, CONV_SIZE, groups=hidden, padding=CONV_SIZE - 1)
                if short_conv
                else None
            )
            self.memory = NeuralMemory(
                dim=hidden,
                chunk_size=chunk,
                dim_head=head_dim,
                heads=heads,
                model=MemoryMLP(head_dim, depth=2, expansion_factor=expansion),
                momentum=True,
                max_grad_norm=max_grad_norm,
                # its decay gate is sigmoid(linear(chunk mean)); a bias (and zero weights) sets
                # where it starts, or None for PyTorch's default Linear init (about 0.5)
                init_decay_bias=None
                if init_decay is None
                else math.log(init_decay / (1 - init_decay)),
            )
            # its per-head initial weights are broadcast views of one tensor (stride 0 over
            # heads), which AdamW's in-place weight decay refuses: each head gets its own copy
            weights = self.memory.memory_model_parameters
            for i, w in enumerate(weights):
                weights[i] = nn.Parameter(w.detach().clone())

        def forward(self, x: torch.Tensor, state=None, use_cache: bool = False) -> torch.Tensor:
            """x [B, T, hidden] -> [B, T, hidden], the memory starting from its learned initial
            weights for every sequence."""
            if state is not None or use_cache:
                raise NotImplementedError("the titans-pytorch reference mixer does not decode")
            if self.conv is not None:
                x = F.silu(self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2))
            out, _ = self.memory(x)
            return out

    return TitansPytorchMixer


def layer_factory(args: argparse.Namespace):
    """A `layer_cls(hidden, heads)` for `Trainer`, with the script's memory settings."""

    cls = mixer_class()

    def make(hidden: int, heads: int):
        return cls(
            hidden,
            heads,
            chunk=args.chunk,
            short_conv=args.short_conv,
            max_grad_norm=args.max_grad_norm,
            init_decay=args.init_decay,
        )

    return make


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--no-short-conv", dest="short_conv", action="store_false",
                   help="titans-pytorch alone, without the short convolution ahead of it")  # fmt: skip
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="NeuralMemory's soft clamp of the memory's gradient norm (default off)")  # fmt: skip
    p.add_argument("--init-decay", type=float, default=None,
                   help="where its per-chunk decay gate starts (default: its own init, about "
                   "0.5); 0.016 matches mirasc's titans, 1 - (1 - 0.001)^16")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--out", default=None, help="run folder (default runs/titans_pytorch_L<L>_<seed>)"
    )
    p.add_argument("--differences", action="store_true", help="print what still differs and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.differences:
        print(DIFFERENCES, end="")
        return 0
    if (message := missing()) is not None:
        print(message, file=sys.stderr)
        return 2

    import torch

    from mirasc.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    out = args.out or f"runs/titans_pytorch_L{args.seq_len}_{args.seed}"
    cfg = TrainConfig(
        spec="titans-pytorch",
        task="mqar",
        steps=args.steps,
        seq_len=args.seq_len,
        pairs=args.pairs,
        vocab=args.vocab,
        batch=args.batch,
        lr=args.lr,
        eval_every=args.eval_every,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        seed=args.seed,
        out=out,
        device="cpu",
    )
    trainer = Trainer(cfg, layer_cls=layer_factory(args))
    params = sum(p.numel() for p in trainer.model.parameters())
    start = time.perf_counter()
    history = trainer.run()
    seconds = time.perf_counter() - start
    last = history[-1]
    trained = [r for r in history if r.get("tokens_per_s")]
    s_per_step = (
        args.batch * args.seq_len / trained[-1]["tokens_per_s"] if trained else float("nan")
    )
    result = {
        "accuracy": last["accuracy"],
        "diverged_at": last["step"] if last.get("diverged") else None,
        "steps": trainer.step,
        "seconds": seconds,
        "seconds_per_step": s_per_step,
        "parameters": params,
        "short_conv": args.short_conv,
        "max_grad_norm": args.max_grad_norm,
        "init_decay": args.init_decay,
        "chunk": args.chunk,
    }
    (Path(out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    state = (
        f"diverged at step {result['diverged_at']}"
        if result["diverged_at"] is not None
        else f"held-out accuracy {last['accuracy']:.1%}"
    )
    print(
        f"titans-pytorch reference, MQAR L={args.seq_len} seed {args.seed}: {state} after "
        f"{trainer.step} steps; {s_per_step:.2f} s/step (training only), {seconds:.0f} s in all; "
        f"{params} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
