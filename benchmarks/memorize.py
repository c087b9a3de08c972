"""Does a memory memorize at its layer's initial gates? Writes N random (key, value) pairs once
through the generated op (unit keys, values of std 0.5, fp64) and prints the recall error
||M(k_i) - v_i||^2 after the pass as a fraction of the error before it: at the gates a freshly
built layer starts from, and with the learning-rate gate at its formula's maximum. A diagnostic
for training runs that stay at chance: it separates an inert inner loop from an outer one that
has not learned to use it.

`--passes N` adds a column: the error left after writing the same pairs N times in a row, at
the initial gates. It separates a slow step (the error shrinks by the same factor each pass) from
a bias whose gradient vanishes as the residual does (the l_p bias with p > 2: its step on a
residual r is proportional to |r|^(p-1), so the error falls ever more slowly).

    python benchmarks/memorize.py [specs ...] [--pairs 8] [--head-dim 32] [--passes N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def recall_error(module, layer, k, v, gates, passes: int = 1) -> float:
    """Mean recall error after writing (k, v) `passes` times, over the error of the initial
    state."""
    norm = layer.norm_args()
    initial = layer.starting_memory(k.shape[0], k)
    written = {g: x.repeat(1, passes, 1) for g, x in gates.items()}
    with torch.no_grad():
        _, final = module.op(
            k.repeat(1, passes, 1, 1), k.repeat(1, passes, 1, 1), v.repeat(1, passes, 1, 1),
            **written, initial_state=initial, output_final_state=True, **norm,
        )  # fmt: skip
        before = module.read(k, initial, **norm)
        after = module.read(k, final, **norm)
    return float((after - v).pow(2).sum(-1).mean() / (before - v).pow(2).sum(-1).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("specs", nargs="*", default=sorted(map(str, (ROOT / "specs").glob("*.miras"))))
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--passes", type=int, default=1, help="also: the error after N passes")
    args = p.parse_args(argv)
    import mirasc
    from mirasc.frontend.checker import load
    from mirasc.ir.spec import GateRef

    H, D, N = 2, args.head_dim, args.pairs
    extra = f" after {args.passes} passes |" if args.passes > 1 else ""
    print(
        "| spec | error after one pass, initial gates | learning-rate gate at its maximum "
        f"| initial gates |{extra}"
    )
    print("| --- | --- | --- | --- |" + (" --- |" if extra else ""))
    for path in args.specs:
        torch.manual_seed(0)  # each spec's row is the same whatever else is listed
        module = mirasc.compile(path)
        layer = module.Layer(H * D, H).double()
        formulas = type(layer).gate_formulas
        start = {g: formulas[g](proj.bias.detach()) for g, proj in layer.gate_proj.items()}
        lr = load(Path(path).read_bytes(), path).algorithm.lr
        k = torch.nn.functional.normalize(
            torch.randn(args.batch, N, H, D, dtype=torch.float64), dim=-1
        )
        v = 0.5 * torch.randn(args.batch, N, H, D, dtype=torch.float64)

        def gates(values: dict) -> dict:
            return {g: x.expand(args.batch, N, H).contiguous() for g, x in values.items()}

        at_start = recall_error(module, layer, k, v, gates(start))
        lr_name = lr.name if isinstance(lr, GateRef) else None
        if lr_name:
            top = formulas[lr_name](torch.full((H,), 30.0, dtype=torch.float64))
            at_max = f"{recall_error(module, layer, k, v, gates({**start, lr_name: top})):.3f}"
        else:
            at_max = "(constant learning rate)"
        shown = ", ".join(f"{g} {float(x.mean()):.3g}" for g, x in start.items()) or "none"
        row = f"| {Path(path).stem} | {at_start:.3f} | {at_max} | {shown} |"
        if extra:
            row += f" {recall_error(module, layer, k, v, gates(start), args.passes):.3f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
