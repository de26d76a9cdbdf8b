"""``edgemodel validate``: check EdgeModel manifests against the API before applying them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "validate", help="validate EdgeModel manifests (the same rules the API server and operator apply)",
    )
    p.add_argument("-f", "--filename", dest="files", type=Path, action="append", required=True,
                   help="manifest file (repeatable)")


def run(args: argparse.Namespace) -> int:
    from edgemodel.manifests import load_edgemodels

    for path in args.files:
        for model in load_edgemodels(path):
            print(f"{path}: EdgeModel {model.metadata.name} is valid")
    return 0
