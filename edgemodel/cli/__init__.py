"""The ``edgemodel`` command line: one entry point, subcommands imported lazily.

Each subcommand lives in ``edgemodel.cli.<name>`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Heavy dependencies are imported inside ``run`` so that, for example,
``edgemodel agent`` works in an install without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edgemodel import __version__
from edgemodel.errors import UserError

SUBCOMMANDS = ("crds", "validate", "convert", "store", "agent", "operator", "federated")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgemodel",
        description="From a trained PyTorch model to measured inference on a fleet of edge nodes.",
    )
    parser.add_argument("--version", action="version", version=f"edgemodel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"edgemodel.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and exit non-zero, without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    module = importlib.import_module(f"edgemodel.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"edgemodel {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgemodel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
