"""The ``cope`` command line. ``main(argv)`` returns the exit code, so tests call it in-process.

Each subcommand lives in a ``cope.commands.<name>`` module exposing ``add_parser(subparsers)`` (which sets
``func``); add new ones to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

COMMANDS = ["embed", "demo", "errors", "eval", "index", "stats", "train", "reproject", "join"]

EXIT_USAGE = 2


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "filelock", "PIL", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cope", description="Cross-domain content embeddings in LanceDB.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bar")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cope.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:  # user errors: say what is wrong, no traceback
        logging.getLogger("cope").debug("error", exc_info=True)
        print(f"cope {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
