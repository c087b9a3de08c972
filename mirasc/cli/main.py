"""The `mirasc` command: compile, explain and check .miras specs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..errors import MirascError

EPILOG = "Each command exits with 0 on success and 1 on a spec or usage error."


def _compile(args) -> int:
    from ..compiler.pipeline import compile_to

    out = Path(args.output)
    for path in args.specs:
        start = time.perf_counter()
        target = compile_to(path, out)
        if not args.quiet:
            print(f"{path} -> {target}/  ({time.perf_counter() - start:.2f} s)")
    return 0


def _explain(args) -> int:
    import sympy as sp

    from ..compiler.pipeline import build
    from ..frontend.source import read_spec

    result = build(*read_spec(args.spec))
    spec, d, plan, files = result.spec, result.derived, result.plan, result.files
    b = d.bias
    print("# spec (normalised)\n")
    print(spec.text())
    print("# attentional bias  l(y, v) = g(_S0, ...), _Si = sum_j phi_i(y_j, v_j)\n")
    print(sp.pretty(sp.Eq(sp.Symbol("l"), b.g, evaluate=False), use_unicode=args.unicode))
    for i, p in enumerate(b.phi):
        print(sp.pretty(sp.Eq(sp.Symbol(f"phi{i}"), p, evaluate=False), use_unicode=args.unicode))
    print("\n# derived: dl/dy_j (element-wise)\n")
    print(sp.pretty(b.grad(), use_unicode=args.unicode))
    if d.activation is not None:
        a = d.activation
        print(f"\n# activation {a.name}: sigma(x), sigma'(x), sigma''(x)\n")
        for e in (a.f, a.df, a.d2f):
            print(sp.pretty(e, use_unicode=args.unicode))
    print("\n# update rule (docs/semantics.md §2)\n")
    print(_update_rule(spec))
    print("\n# plan\n")
    print(f"torch backend: {', '.join(plan.strategies)} (default {plan.strategies[0]})")
    print(
        f"triton backend: fused recurrent forward and backward kernels, one program per "
        f"(batch, head); state saved every {plan.segment} tokens, the backward pass recomputes "
        f"each segment: activation memory (ceil(T / {plan.segment}) + {plan.segment + 1}) x |state| "
        "per (batch, head)"
    )
    print("\n# emitted element-wise code (elementwise.py)\n")
    print(files["elementwise.py"])
    if args.all:
        for fname, text in files.items():
            if fname != "elementwise.py":
                print(f"# ---- {fname}\n{text}")
    return 0


def _update_rule(spec) -> str:
    from ..ir.spec import operand_text

    ret, alg = spec.retention, spec.algorithm
    lr = operand_text(alg.lr)
    rate = operand_text(ret.gate) if ret.gate is not None else ""
    at = f"(1 - {rate}_t) W°" if ret.first else "W°"
    g = f"g_t = grad_W l(f(W; k_t), v_t) at W = {at}, W° = state at the end of the previous chunk (chunk = {spec.chunk})"
    if spec.clip is not None:
        g += f", soft-clamped to norm {spec.clip}"
    if alg.kind == "momentum":
        keep = f"(1 - {rate}_t) " if ret.kind == "decay" else ""
        rule = (
            f"S_t = {operand_text(alg.momentum)}_t S_(t-1) - {lr}_t g_t;  W_t = {keep}W_(t-1) + S_t"
        )
    elif ret.kind == "none":
        rule = f"W_t = W_(t-1) - {lr}_t g_t"
    elif ret.kind == "decay":
        rule = f"W_t = (1 - {rate}_t) W_(t-1) - {lr}_t g_t"
    elif ret.kind == "l2":
        rule = f"W_t = (W_(t-1) - {lr}_t g_t) / (1 + {lr}_t {rate}_t)"
    elif ret.kind == "lq":
        rule = (
            f"A_t = {rate}_t A_(t-1) - {lr}_t g_t;  W_t = A_t / ||A||_{ret.q:g}^{ret.q - 2:g}"
            " (norm of A_t at chunk ends, of the chunk's anchor inside a chunk)"
        )
    else:
        rule = (
            f"W_t = softmax({rate}_t log W_(t-1) - {lr}_t g_t) on a chunk's first token, "
            f"W_t = {rate}_t W_(t-1) - {lr}_t g_t on the rest"
        )
    return f"{g}\n{rule}\no_t = f(W_t; scale * q_t)  (read after write)"


def _check(args) -> int:
    from ..testing.spec_check import check_spec

    return check_spec(
        args.spec, examples=args.examples, seed=args.seed, dtype=args.dtype, backend=args.backend
    )


def _train(args) -> int:
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


TEXT_PROMPT = "And God said unto Moses, "


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mirasc",
        description="Compile declarative test-time memory specs (.miras) into PyTorch layers.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"mirasc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "compile",
        help="compile specs into importable packages",
        description="Compile each SPEC into DIR/<name>/, an importable Python package.",
        epilog=EPILOG,
    )
    c.add_argument("specs", nargs="+", metavar="SPEC", help=".miras spec file(s)")
    c.add_argument(
        "-o",
        "--output",
        default="generated",
        metavar="DIR",
        help="output folder (default: generated)",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    c.set_defaults(run=_compile)

    e = sub.add_parser(
        "explain",
        help="show the derived update rule and the code it emits",
        description="Print the normalised spec, the SymPy derivation and the emitted code.",
        epilog=EPILOG,
    )
    e.add_argument("spec", metavar="SPEC")
    e.add_argument("--all", action="store_true", help="print every generated file")
    e.add_argument("--ascii", dest="unicode", action="store_false", help="ASCII-only formulas")
    e.set_defaults(run=_explain)

    k = sub.add_parser(
        "check",
        help="property-test a spec's backend against the autograd reference",
        description=(
            "Compile SPEC and compare its torch backend (every strategy) or its Triton kernels "
            "with the float64 autograd reference on random shapes, chunk boundaries and gate "
            "values; print the worst relative error per tensor. Exit 1 if any exceeds its "
            "tolerance."
        ),
        epilog=EPILOG,
    )
    k.add_argument("spec", metavar="SPEC")
    k.add_argument("-n", "--examples", type=int, default=20, help="random cases (default 20)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default=None,
        help="input dtype (default float64 for torch, float32 for triton, which refuses fp64)",
    )
    k.add_argument(
        "--backend",
        choices=("torch", "triton"),
        default="torch",
        help="triton runs in its CPU interpreter when there is no GPU (slow: use small -n)",
    )
    k.set_defaults(run=_check)

    t = sub.add_parser(
        "train",
        help="train a model around a spec on a synthetic task",
        description=(
            "Train a small language model whose token mixer is SPEC's layer (plain stack, or the "
            "Titans hybrids MAC/MAL/MAG) on a synthetic task generated on the fly. Writes "
            "DIR/config.json, DIR/metrics.jsonl, DIR/checkpoint.pt and DIR/curves.png. "
            "Runs unchanged under torchrun."
        ),
        epilog=EPILOG,
    )
    t.add_argument("spec", metavar="SPEC", help="a .miras file, or `attention` for the baseline")
    t.add_argument("--task", choices=("mqar", "niah", "copy", "text"), default="mqar")
    t.add_argument("--model", choices=("lm", "mac", "mal", "mag"), default="lm")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--seq-len", dest="seq_len", type=int, default=64)
    t.add_argument("--pairs", type=int, help="mqar: key-value pairs (default seq-len / 8)")
    t.add_argument("--vocab", type=int, help="mqar: vocabulary (default max(256, 2 seq-len + 2))")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=30)
    t.add_argument("--eval-every", dest="eval_every", type=int, default=50)
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=2)
    t.add_argument(
        "--window", type=int, default=32, help="attention window (MAL, MAG) or segment (MAC)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where to train (auto: CUDA when a GPU is visible; under torchrun, GPU LOCAL_RANK)",
    )  # fmt: skip
    t.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: torch.autocast on the device; parameters and memory state stay fp32",
    )  # fmt: skip
    t.add_argument("--out", default="runs/train", metavar="DIR")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    t.set_defaults(run=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except MirascError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mirasc explain x | head`: the reader left, as Unix tools allow
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug in mirasc, not in the spec: say so, without a traceback
        if os.environ.get("MIRASC_DEBUG"):
            raise
        print(
            f"mirasc: internal error: {type(e).__name__}: {e}\n"
            "    this is a bug in mirasc; rerun with MIRASC_DEBUG=1 for a traceback",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
