"""`mirasc check`: a spec's generated backends held to the float64 reference on random cases."""

from __future__ import annotations


def add_parser(sub, epilog: str) -> None:
    parser = sub.add_parser(
        "check",
        help="property-test a spec's backend against the autograd reference",
        description=(
            "Compile SPEC and compare its torch backend (every strategy) or its Triton kernels "
            "with the float64 autograd reference on random shapes, chunk boundaries and gate "
            "values; print the worst relative error per tensor. Exit 1 if any exceeds its "
            "tolerance."
        ),
        epilog=epilog,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("-n", "--examples", type=int, default=20, help="random cases (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default=None,
        help="input dtype (default float64 for torch, float32 for triton, which refuses fp64)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "triton"),
        default="torch",
        help="triton runs in its CPU interpreter when there is no GPU (slow: use small -n)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..testing.spec_check import check_spec

    return check_spec(
        args.spec, examples=args.examples, seed=args.seed, dtype=args.dtype, backend=args.backend
    )
