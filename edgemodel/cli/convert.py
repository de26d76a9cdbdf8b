"""``edgemodel convert``: not built yet (filled in by its issue)."""

from __future__ import annotations

import argparse
from typing import Any

from edgemodel.errors import UserError


def add_parser(sub: Any) -> None:
    sub.add_parser("convert", help="(convert: not built yet)")


def run(args: argparse.Namespace) -> int:
    raise UserError("'convert' is not built yet in this version")
