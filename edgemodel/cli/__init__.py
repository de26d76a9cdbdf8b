"""The ``edgemodel`` command line: one entry point, subcommands imported lazily.

Each subcommand lives in ``edgemodel.cli.<name>`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Heavy dependencies are imported inside ``run`` so that, for example,
``edgemodel agent`` works in an install without torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgemodel.cli.dispatch import LazyCli

SUBCOMMANDS = ("crds", "validate", "convert", "store", "agent", "operator", "federated")

CLI = LazyCli(
    prog="edgemodel",
    description="From a trained PyTorch model to measured inference on a fleet of edge nodes.",
    package="edgemodel.cli",
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
