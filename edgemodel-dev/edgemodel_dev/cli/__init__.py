"""The ``edgemodel-dev`` command line: ``up`` (the local control plane) and ``demo`` (the whole loop).

Each subcommand lives in ``edgemodel_dev.cli.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``, as in the product's ``edgemodel`` command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edgemodel import __version__
from edgemodel.errors import UserError

SUBCOMMANDS = ("up", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgemodel-dev",
        description="edgemodel's local Kubernetes control plane (API emulator + kubelet) and demo.",
    )
    parser.add_argument("--version", action="version", version=f"edgemodel-dev {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"edgemodel_dev.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and exit non-zero, without a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    module = importlib.import_module(f"edgemodel_dev.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"edgemodel-dev {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgemodel-dev {args.command}: interrupted", file=sys.stderr)
        return 130
