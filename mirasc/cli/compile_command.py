"""`mirasc compile`: spec files to importable packages."""

from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub, epilog: str) -> None:
    parser = sub.add_parser(
        "compile",
        help="compile specs into importable packages",
        description="Compile each SPEC into DIR/<name>/, an importable Python package.",
        epilog=epilog,
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help=".miras spec file(s)")
    parser.add_argument(
        "-o",
        "--output",
        default="generated",
        metavar="DIR",
        help="output folder (default: generated)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..compiler.pipeline import compile_to

    out = Path(args.output)
    for path in args.specs:
        start = time.perf_counter()
        target = compile_to(path, out)
        if not args.quiet:
            print(f"{path} -> {target}/  ({time.perf_counter() - start:.2f} s)")
    return 0
