"""``edgemodel crds``: print, write or check the generated CustomResourceDefinitions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgemodel.errors import UserError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "crds", help="print, write or check the CRDs generated from the API models",
        description="Generate the EdgeModel and EdgeAgent CRDs from the pydantic API models.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", type=Path, help="write one YAML file per CRD into DIR (e.g. crds/)")
    group.add_argument("--check", metavar="DIR", type=Path, help="exit 1 when the CRDs in DIR are stale")


def run(args: argparse.Namespace) -> int:
    from edgemodel.crds import all_crds, render, write_all

    if args.write:
        for path in write_all(args.write):
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = [n for n, c in all_crds().items() if not (args.check / n).is_file() or (args.check / n).read_text() != render(c)]
        if stale:
            raise UserError(f"stale CRDs in {args.check}: {', '.join(stale)}; run `edgemodel crds --write {args.check}`", 1)
        print(f"CRDs in {args.check} are up to date")
        return 0
    print("---\n".join(render(c) for c in all_crds().values()), end="")
    return 0
