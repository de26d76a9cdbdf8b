"""The ``edgemodel-dev`` command line: ``up`` (the local control plane) and ``demo`` (the whole loop).

Each subcommand lives in ``edgemodel_dev.cli.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``, dispatched like the product's ``edgemodel`` command (``edgemodel.cli.dispatch``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgemodel.cli.dispatch import LazyCli

SUBCOMMANDS = ("up", "demo")

CLI = LazyCli(
    prog="edgemodel-dev",
    description="edgemodel's local Kubernetes control plane (API emulator + kubelet) and demo.",
    package="edgemodel_dev.cli",
    subcommands=SUBCOMMANDS,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    return CLI.build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and exit non-zero, without a traceback."""
    return CLI.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
