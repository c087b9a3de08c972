"""Small-scale recall table: the shipped specs and a softmax-attention baseline of the same width,
trained with `mirasc train`'s trainer on MQAR at several sequence lengths and seeds, then S-NIAH
against haystack length for the best few. Writes markdown tables (held-out accuracy: the mean over
the seeds that trained to the end and each seed's value, or the step a run diverged at; seconds
per run) and plots to `--out`.

Every run keeps its result in `<out>/<run>/result.json` (with the sha256 of its spec's text: a run
of a spec edited since is trained again), so an interrupted sweep resumes where it
stopped and a finished one reprints its table at once (`--no-train` reports what is stored, a
cell not trained yet reads "not run"); `--jobs N` trains N runs at a time, each with its share of
the CPU threads (one thread per run is fastest on a small machine). `--lengths` with no value
trains no MQAR run and gives S-NIAH for every model named, the same runs a full sweep makes.

    python benchmarks/recall_table.py [--specs ...] [--lengths 128 256 512] [--seeds 0 1]
        [--baseline-layers 1 2] [--jobs 2] [--out runs/recall_table]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SPECS = [str(s) for s in sorted((ROOT / "specs").glob("*.miras"))]


@dataclass(frozen=True)
class Run:
    """One training run: a model (a spec file, or the attention baseline with its depth) on a task."""

    spec: str
    layers: int
    task: str
    seq_len: int
    seed: int

    @property
    def row(self) -> str:
        if self.spec == "attention":
            return f"attention ({self.layers} layer{'s' if self.layers > 1 else ''})"
        return Path(self.spec).stem

    def folder(self, out: Path) -> Path:
        name = self.row.replace(" (", "_").replace(" ", "_").rstrip(")")
        return out / f"{self.task}_{name}_{self.seq_len}_{self.seed}"


def train_config(run: Run, args):
    from mirasc.training.trainer import TrainConfig

    return TrainConfig(
        spec=run.spec,
        task=run.task,
        steps=args.steps,
        seq_len=run.seq_len,
        pairs=args.pairs if run.task == "mqar" else None,
        vocab=args.vocab if run.task == "mqar" else None,
        batch=args.batch,
        lr=args.lr,
        eval_every=args.steps,
        hidden=args.hidden,
        layers=run.layers,
        seed=run.seed,
        out=str(run.folder(Path(args.out))),
    )


def spec_digest(spec: str) -> str | None:
    """sha256 of a spec file's bytes (None for the attention baseline): a run stored for an
    older text of the same spec file is not reused."""
    path = Path(spec)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def cached(run: Run, args) -> dict | None:
    """The stored result of `run`, if one was trained with exactly this configuration and
    spec text."""
    path = run.folder(Path(args.out)) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    stored, wanted = result["config"], asdict(train_config(run, args))
    same = all(stored[k] == wanted[k] for k in wanted if k != "out")
    same = same and result.get("spec_sha256") == spec_digest(run.spec)
    return result if same else None


def train(run: Run, args, threads: int) -> dict:
    """Train one run (in a worker process) and store its final held-out accuracy and time."""
    import torch

    from mirasc.training.trainer import Trainer

    torch.set_num_threads(threads)
    cfg = train_config(run, args)
    digest = spec_digest(run.spec)  # the text trained on, read before training
    start = time.perf_counter()
    history = Trainer(cfg).run()
    last = history[-1]
    result = {
        "accuracy": last["accuracy"],
        "diverged_at": last["step"] if last.get("diverged") else None,
        "seconds": time.perf_counter() - start,
        "config": asdict(cfg),
        "spec_sha256": digest,
    }
    (Path(cfg.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def exit_with_parent(parent: int) -> None:
    """In a worker: exit as soon as the sweep's process is gone (killed, or stopped by a
    signal that skips the pool's shutdown), rather than train on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def sweep(runs: list[Run], args) -> dict[Run, dict]:
    """Results for `runs`, training those not stored yet, the longest sequences first."""
    results = {r: res for r in runs if (res := cached(r, args)) is not None}
    todo = sorted((r for r in runs if r not in results), key=lambda r: -r.seq_len)
    if args.no_train:
        todo = []
    print(f"{len(results)} of {len(runs)} runs stored; training {len(todo)}", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {pool.submit(train, r, args, threads): r for r in todo}
        for future in as_completed(futures):
            run, res = futures[future], future.result()
            results[run] = res
            print(f"{run.task} {run.row:20s} L={run.seq_len:4d} seed {run.seed}: "
                  f"{res['accuracy']:.1%} in {res['seconds']:.0f} s", flush=True)  # fmt: skip
    return results


def rows_of(runs: list[Run], results: dict[Run, dict]) -> dict[str, dict[int, list]]:
    """row name -> sequence length -> result per seed, in seed order (None: not trained yet)."""
    rows: dict[str, dict[int, list]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        rows.setdefault(run.row, {}).setdefault(run.seq_len, []).append(results.get(run))
    return rows


def trained(cell: list) -> list[dict]:
    return [r for r in cell if r is not None]


def finished(cell: list) -> list[dict]:
    """The runs of a cell that trained to the end (a diverged run has no final accuracy)."""
    return [r for r in trained(cell) if r.get("diverged_at") is None]


def shown(result: dict | None) -> str:
    if result is None:
        return "not run"
    if result.get("diverged_at") is not None:
        return f"diverged at step {result['diverged_at']}"
    return f"{result['accuracy']:.1%}"


def table(rows: dict[str, dict[int, list]], lengths: list[int]) -> str:
    out = ["| model | " + " | ".join(f"L = {L}" for L in lengths) + " | s/run (by L) |"]
    out.append("| --- |" + " --- |" * (len(lengths) + 1))
    for name, by_length in rows.items():
        cells = []
        for L in lengths:
            cell = by_length[L]
            seeds = ", ".join(shown(r) for r in cell)
            accs = [r["accuracy"] for r in finished(cell)]
            if not trained(cell):
                seeds = "not run"
            cells.append(
                f"{statistics.mean(accs):.1%} ({seeds})" if accs and len(cell) > 1 else seeds
            )
        secs = ", ".join(
            f"{statistics.mean(r['seconds'] for r in trained(by_length[L])):.0f}"
            if trained(by_length[L]) else "–"
            for L in lengths
        )  # fmt: skip
        out.append(f"| {name} | " + " | ".join(cells) + f" | {secs} |")
    return "\n".join(out)


def plot(rows: dict[str, dict[int, list]], lengths: list[int], path: Path, title: str) -> None:
    """Mean accuracy against length per row, each seed's value as a faint dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(trained(cell) for by_length in rows.values() for cell in by_length.values()):
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, by_length in rows.items():
        done = [L for L in lengths if finished(by_length[L])]
        means = [statistics.mean(r["accuracy"] for r in finished(by_length[L])) for L in done]
        style = "--" if name.startswith("attention") else "-"
        (line,) = ax.plot(done, means, marker="o", linestyle=style, label=name)
        for L in lengths:
            accs = [r["accuracy"] for r in finished(by_length[L])]
            ax.scatter([L] * len(accs), accs, s=10, alpha=0.4, color=line.get_color())
    ax.set(xlabel="sequence length", ylabel="held-out accuracy", title=title, ylim=(-0.02, 1.02))
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(lengths) / 1.25, max(lengths) * 1.25)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", nargs="*", default=DEFAULT_SPECS, help="spec files (default: all)")
    p.add_argument("--baseline-layers", nargs="*", type=int, default=[1, 2],
                   help="softmax-attention baselines of these depths (none: no baseline)")  # fmt: skip
    p.add_argument("--lengths", nargs="*", type=int, default=[128, 256, 512])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1, help="layers of the memory models")
    p.add_argument("--pairs", type=int, default=8, help="MQAR key-value pairs at every length")
    p.add_argument("--vocab", type=int, default=64, help="MQAR vocabulary")
    p.add_argument("--niah-lengths", nargs="*", type=int, default=[128, 256, 512])
    p.add_argument("--niah-seeds", nargs="*", type=int, help="S-NIAH seeds (default: --seeds)")
    p.add_argument("--niah-best", type=int, default=3, help="S-NIAH for the best N on MQAR")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time")
    p.add_argument("--threads", type=int, help="threads per run (default: cores / jobs)")
    p.add_argument("--no-train", action="store_true", help="report the stored runs only")
    p.add_argument("--out", default="runs/recall_table")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    specs = [str(Path(s).resolve()) for s in args.specs]
    models = [(s, args.layers) for s in specs] + [("attention", n) for n in args.baseline_layers]
    mqar_runs = [
        Run(s, n, "mqar", L, seed) for s, n in models for L in args.lengths for seed in args.seeds
    ]
    mqar = rows_of(mqar_runs, sweep(mqar_runs, args))
    report = []
    if mqar_runs:  # `--lengths` with no value: S-NIAH only, for the models given
        report += [
            f"MQAR ({args.pairs} pairs, vocabulary {args.vocab}): held-out accuracy after "
            f"{args.steps} steps of batch {args.batch}, memory models {args.layers} layer(s) of "
            f"width {args.hidden}; mean over seeds {args.seeds} (each seed's value in brackets)\n",
            table(mqar, args.lengths),
        ]
        plot(mqar, args.lengths, out / "mqar.png", "MQAR")
    if args.niah_best and args.niah_lengths:
        if mqar_runs:
            by_mean = {
                (s, n): statistics.mean(
                    [
                        r["accuracy"]
                        for L in args.lengths
                        for r in finished(mqar[Run(s, n, "mqar", L, 0).row][L])
                    ]
                    or [0.0]
                )
                for s, n in models
            }
            best = sorted(models, key=by_mean.get, reverse=True)[: args.niah_best]
        else:  # `--lengths` with no value: no MQAR run to rank by, every model given
            best = models
        niah_runs = [
            Run(s, n, "niah", L, seed)
            for s, n in best
            for L in args.niah_lengths
            for seed in args.niah_seeds or args.seeds
        ]
        niah = rows_of(niah_runs, sweep(niah_runs, args))
        chosen = f"the best {args.niah_best} on MQAR" if mqar_runs else "the models given"
        report += [
            "\nS-NIAH (niah_single_1, repeated haystack): held-out accuracy on the needle's "
            f"digits by context length after {args.steps} steps, {chosen}, seeds "
            f"{args.niah_seeds or args.seeds}\n",
            table(niah, args.niah_lengths),
        ]
        plot(niah, args.niah_lengths, out / "niah.png", "S-NIAH")
    text = "\n".join(report).lstrip("\n")
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    (out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
