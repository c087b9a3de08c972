"""`mirasc train`: a small language model around a spec's layer, trained on a generated task."""

from __future__ import annotations

import os
import sys

TEXT_PROMPT = "And God said unto Moses, "


def add_parser(sub, epilog: str) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model around a spec on a synthetic task",
        description=(
            "Train a small language model whose token mixer is SPEC's layer (plain stack, or the "
            "Titans hybrids MAC/MAL/MAG) on a synthetic task generated on the fly. Writes "
            "DIR/config.json, DIR/metrics.jsonl, DIR/checkpoint.pt and DIR/curves.png. "
            "Runs unchanged under torchrun."
        ),
        epilog=epilog,
    )
    parser.add_argument(
        "spec", metavar="SPEC", help="a .miras file, or `attention` for the baseline"
    )
    parser.add_argument("--task", choices=("mqar", "niah", "copy", "text"), default="mqar")
    parser.add_argument("--model", choices=("lm", "mac", "mal", "mag"), default="lm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", dest="seq_len", type=int, default=64)
    parser.add_argument("--pairs", type=int, help="mqar: key-value pairs (default seq-len / 8)")
    parser.add_argument(
        "--vocab", type=int, help="mqar: vocabulary (default max(256, 2 seq-len + 2))"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--eval-every", dest="eval_every", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument(
        "--window", type=int, default=32, help="attention window (MAL, MAG) or segment (MAC)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where to train (auto: CUDA when a GPU is visible; under torchrun, GPU LOCAL_RANK)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: torch.autocast on the device; parameters and memory state stay fp32",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/train", metavar="DIR")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..training.device import DeviceUnavailable
    from ..training.trainer import TrainConfig, Trainer

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        trainer = Trainer(cfg, resume=args.resume)
    except ValueError as e:  # sizes a task cannot be made at: a usage error
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DeviceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    history = trainer.run()
    if history and int(os.environ.get("RANK", 0)) == 0:
        first, last = history[0], history[-1]
        print(
            f"{cfg.out}: accuracy {first['accuracy']:.1%} (step {first['step']}) -> "
            f"{last['accuracy']:.1%} (step {last['step']}); metrics.jsonl, curves.png, checkpoint.pt"
        )
        if last.get("diverged"):
            print(f"error: training diverged at step {last['step']}", file=sys.stderr)
            return 1
        if cfg.task == "text":
            print(f"sample: {trainer.complete(TEXT_PROMPT, 120)!r}")
    return 0
