"""Small-scale recall table: shipped specs and a softmax-attention baseline of the same width,
trained with `mirasc train`'s trainer on MQAR at several sequence lengths (with seeds), then
S-NIAH accuracy against haystack length for the best few. Prints markdown tables (final
held-out accuracy, mean ± half-range over seeds, and seconds per run) and writes a plot beside
them. The budget is fixed and small (CPU): report what comes out.

    python benchmarks/recall_table.py [--specs ...] [--lengths 128 256 512] [--seeds 0 1]
        [--steps 300] [--niah-lengths 128 256] [--niah-best 3] [--out runs/recall_table]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SPECS = [str(s) for s in sorted((ROOT / "specs").glob("*.miras"))] + ["attention"]


def run(spec: str, task: str, seq_len: int, seed: int, args) -> tuple[float, float]:
    """(final held-out accuracy, seconds) of one training run."""
    from mirasc.train import TrainConfig, Trainer

    cfg = TrainConfig(
        spec=spec,
        task=task,
        steps=args.steps,
        seq_len=seq_len,
        pairs=args.pairs if task == "mqar" else None,
        vocab=args.vocab if task == "mqar" else None,
        batch=args.batch,
        lr=args.lr,
        eval_every=args.steps,
        hidden=args.hidden,
        layers=args.layers,
        seed=seed,
        out=str(Path(args.out) / f"{task}_{Path(spec).stem}_{seq_len}_{seed}"),
    )
    start = time.perf_counter()
    history = Trainer(cfg).run()
    return history[-1]["accuracy"], time.perf_counter() - start


def sweep(specs, task: str, lengths, args) -> dict:
    rows = {}
    for spec in specs:
        for L in lengths:
            results = [run(spec, task, L, s, args) for s in args.seeds]
            rows[(Path(spec).stem, L)] = results
            accs = [a for a, _ in results]
            print(f"{task} {Path(spec).stem:18s} L={L:4d} acc {statistics.mean(accs):.1%} "
                  f"({min(accs):.1%}-{max(accs):.1%}) "
                  f"{statistics.mean(t for _, t in results):.0f} s/run", flush=True)  # fmt: skip
    return rows


def table(rows: dict, lengths, label: str) -> str:
    names = list(dict.fromkeys(n for n, _ in rows))
    out = ["| spec | " + " | ".join(f"{label} {L}" for L in lengths) + " | s/run |"]
    out.append("| --- |" + " --- |" * (len(lengths) + 1))
    for n in names:
        cells = []
        for L in lengths:
            accs = [a for a, _ in rows[(n, L)]]
            cells.append(f"{statistics.mean(accs):.1%} ± {(max(accs) - min(accs)) / 2:.1%}")
        secs = statistics.mean(t for L in lengths for _, t in rows[(n, L)])
        out.append(f"| {n} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(out)


def plot(rows: dict, lengths, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in dict.fromkeys(n for n, _ in rows):
        means = [statistics.mean(a for a, _ in rows[(n, L)]) for L in lengths]
        ax.plot(lengths, means, marker="o", label=n, linestyle="--" if n == "attention" else "-")
    ax.set(xlabel="sequence length", ylabel="held-out accuracy", title=title, ylim=(0, 1.02))
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", nargs="*", default=DEFAULT_SPECS)
    p.add_argument("--lengths", nargs="*", type=int, default=[128, 256, 512])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--pairs", type=int, default=8, help="MQAR key-value pairs at every length")
    p.add_argument("--vocab", type=int, help="MQAR vocabulary (default max(256, 2 L + 2))")
    p.add_argument("--niah-lengths", nargs="*", type=int, default=[128, 256])
    p.add_argument("--niah-best", type=int, default=3, help="S-NIAH for the best N on MQAR")
    p.add_argument("--out", default="runs/recall_table")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mqar = sweep(args.specs, "mqar", args.lengths, args)
    vocab = args.vocab or "max(256, 2L + 2)"
    report = [f"MQAR ({args.pairs} pairs, vocabulary {vocab}), held-out accuracy after "
              f"{args.steps} steps of batch {args.batch}, {args.layers} layer(s) of width "
              f"{args.hidden}, seeds {args.seeds}:\n", table(mqar, args.lengths, "L =")]  # fmt: skip
    plot(mqar, args.lengths, out / "mqar.png", "MQAR")
    if args.niah_best and args.niah_lengths:
        score = {
            spec: statistics.mean(a for L in args.lengths for a, _ in mqar[(Path(spec).stem, L)])
            for spec in args.specs
        }
        best = sorted(args.specs, key=score.get, reverse=True)[: args.niah_best]
        niah = sweep(best, "niah", args.niah_lengths, args)
        report += ["\nS-NIAH (niah_single_1, repeated haystack), held-out accuracy of the value's "
                   "digits by context length:\n", table(niah, args.niah_lengths, "L =")]  # fmt: skip
        plot(niah, args.niah_lengths, out / "niah.png", "S-NIAH")
    text = "\n".join(report)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
