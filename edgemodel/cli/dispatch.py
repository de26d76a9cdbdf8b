"""The command-line shape shared by ``edgemodel`` and ``edgemodel-dev``: subcommands imported lazily.

Each subcommand is a module ``<package>.<name>`` with ``add_parser(subparsers)`` and ``run(args) -> int``;
heavy dependencies are imported inside ``run``. User mistakes print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from edgemodel import __version__
from edgemodel.errors import UserError


@dataclass(frozen=True)
class LazyCli:
    """A program made of lazily imported subcommand modules of one package."""

    prog: str
    description: str
    package: str
    subcommands: tuple[str, ...]

    def build_parser(self) -> argparse.ArgumentParser:
        """The argument parser with every subcommand registered."""
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        parser.add_argument("--version", action="version", version=f"{self.prog} {__version__}")
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for name in self.subcommands:
            importlib.import_module(f"{self.package}.{name}").add_parser(sub)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run one subcommand; a :class:`UserError` prints one line without a traceback."""
        args = self.build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
        module = importlib.import_module(f"{self.package}.{args.command}")
        try:
            return int(module.run(args) or 0)
        except UserError as exc:
            print(f"{self.prog} {args.command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"{self.prog} {args.command}: interrupted", file=sys.stderr)
            return 130
