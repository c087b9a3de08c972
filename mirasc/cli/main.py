"""The `mirasc` command: the parser of its subcommands (one module each) and the error policy
(0 on success, 1 on a spec or usage error, 2 only for a bug in mirasc)."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import MirascError
from . import check_command, compile_command, explain_command, train_command

EPILOG = "Each command exits with 0 on success and 1 on a spec or usage error."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mirasc",
        description="Compile declarative test-time memory specs (.miras) into PyTorch layers.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"mirasc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command in (compile_command, explain_command, check_command, train_command):
        command.add_parser(sub, EPILOG)
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
