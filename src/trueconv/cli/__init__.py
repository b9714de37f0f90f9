"""The ``trueconv`` command: one argparse parser, one module per subcommand.

Every subcommand module defines ``register(subparsers)`` (which sets
``func`` on its parser) and keeps its heavy imports inside the function that
runs, so ``trueconv --help`` stays fast. Errors become one line on stderr and
a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("demo", "filter", "explain", "train_digits", "bench")

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="trueconv",
        description="Convolution and cross-correlation, correct and fast.",
    )
    parser.add_argument("--version", action="version", version=f"trueconv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # subcommand not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("trueconv: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, MemoryError, OverflowError, ImportError) as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"trueconv {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
