"""The ``distcache`` umbrella command: what the legacy tools never had.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser
and sets ``handler`` (a callable taking the parsed arguments and returning the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from . import UsageError

#: Modules (in distcache.cli) that contribute subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = ("decode", "oneshot", "conformance", "dissector", "health")


class _Parser(argparse.ArgumentParser):
    """Reports bad usage in one line (plus a pointer to --help), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distcache",
        description="distcache protocol tools: decoding, conformance, one-shot operations.",
    )
    parser.add_argument("--version", action="version", version=f"distcache {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Unknown words are named before a missing command (argparse reports the latter first).
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("a COMMAND is required")
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"distcache {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`| head`): it has all it wanted, so this is
        # success. Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
