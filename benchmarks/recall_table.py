"""Small-scale recall table: every shipped spec, and a softmax-attention baseline of the same
width, trained with `mirasc train`'s trainer on MQAR at several sequence lengths, with seeds.
Prints a markdown table of final held-out accuracy (mean ± half-range over seeds) and the time
per run. The budget is fixed and small (CPU): report what comes out.

    python benchmarks/recall_table.py [--lengths 128 256 512] [--seeds 0 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(spec: str, seq_len: int, seed: int, args) -> tuple[float, float]:
    from mirasc.train import TrainConfig, Trainer

    cfg = TrainConfig(
        spec=spec,
        task="mqar",
        steps=args.steps,
        seq_len=seq_len,
        batch=args.batch,
        eval_every=args.steps,
        hidden=args.hidden,
        layers=args.layers,
        seed=seed,
        out=str(Path(args.out) / f"{Path(spec).stem}_{seq_len}_{seed}"),
    )
    start = time.perf_counter()
    history = Trainer(cfg).run()
    return history[-1]["accuracy"], time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--specs", nargs="*", default=[str(s) for s in sorted((ROOT / "specs").glob("*.miras"))]
    )
    p.add_argument("--lengths", nargs="*", type=int, default=[128, 256, 512])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default="runs/recall_table")
    args = p.parse_args(argv)
    rows = {}
    for spec in args.specs:
        for L in args.lengths:
            results = [run(spec, L, s, args) for s in args.seeds]
            rows[(Path(spec).stem, L)] = results
            accs = [a for a, _ in results]
            print(f"{Path(spec).stem:18s} L={L:4d} acc {statistics.mean(accs):.1%} "
                  f"({min(accs):.1%}-{max(accs):.1%}) {statistics.mean(t for _, t in results):.0f} s/run",
                  flush=True)  # fmt: skip
    names = sorted({n for n, _ in rows})
    print("\n| spec | " + " | ".join(f"MQAR L={L}" for L in args.lengths) + " | s/run |")
    print("| --- |" + " --- |" * (len(args.lengths) + 1))
    for n in names:
        cells = []
        for L in args.lengths:
            accs = [a for a, _ in rows[(n, L)]]
            cells.append(f"{statistics.mean(accs):.1%} ± {(max(accs) - min(accs)) / 2:.1%}")
        secs = statistics.mean(t for L in args.lengths for _, t in rows[(n, L)])
        print(f"| {n} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
