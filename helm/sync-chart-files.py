#!/usr/bin/env python3
"""Copy the files the chart and the dev distribution embed from their sources.

Helm can only read files inside the chart, and a wheel only files inside its package, so these
hold byte-identical copies:
  crds/*.yaml                       -> helm/edgemodel/files/crds/   (generated from edgemodel/api)
  helm/alerts/edgemodel-alerts.yaml -> helm/edgemodel/files/alerts/ (PrometheusRule source)
  helm/dashboards/*.json            -> helm/edgemodel/files/dashboards/
  crds/*.yaml                       -> edgemodel-dev/edgemodel_dev/crds/ (package data: the emulator's default CRDs)
  examples/digits-*.yaml            -> edgemodel-dev/edgemodel_dev/demo/examples/ (package data: the demo's manifests)

Run after `edgemodel crds --write crds` or after editing alerts or dashboards:
  .venv/bin/python helm/sync-chart-files.py          # write the copies
  .venv/bin/python helm/sync-chart-files.py --check  # exit 1 when a copy is stale (tests/helm does this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "helm" / "edgemodel" / "files"
DEV = ROOT / "edgemodel-dev" / "edgemodel_dev"
# destination folder -> (source folder, glob)
SOURCES: dict[Path, tuple[Path, str]] = {
    FILES / "crds": (ROOT / "crds", "*.yaml"),
    FILES / "alerts": (ROOT / "helm" / "alerts", "edgemodel-alerts.yaml"),
    FILES / "dashboards": (ROOT / "helm" / "dashboards", "*.json"),
    DEV / "crds": (ROOT / "crds", "*.yaml"),
    DEV / "demo" / "examples": (ROOT / "examples", "digits-*.yaml"),
}


def planned() -> dict[Path, bytes]:
    """Every copy the chart should hold, with its expected content."""
    out: dict[Path, bytes] = {}
    for folder, (src_dir, pattern) in SOURCES.items():
        for src in sorted(src_dir.glob(pattern)):
            out[folder / src.name] = src.read_bytes()
    return out


def stale() -> list[str]:
    """Copies that differ from their source, are missing, or have no source any more."""
    want = planned()
    problems = [str(p.relative_to(ROOT)) for p, data in want.items() if not p.is_file() or p.read_bytes() != data]
    for folder in SOURCES:
        for p in sorted(folder.glob("*")):
            if p not in want:
                problems.append(f"{p.relative_to(ROOT)} (no source)")
    return problems


def write() -> list[Path]:
    """Write the copies and delete copies whose source is gone."""
    want = planned()
    for folder in SOURCES:
        folder.mkdir(parents=True, exist_ok=True)
        for p in folder.glob("*"):
            if p not in want:
                p.unlink()
    for path, data in want.items():
        path.write_bytes(data)
    return sorted(want)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a copy is stale instead of writing")
    args = parser.parse_args()
    if args.check:
        problems = stale()
        if problems:
            print("stale copies: " + ", ".join(problems) + "; run `.venv/bin/python helm/sync-chart-files.py`",
                  file=sys.stderr)
            return 1
        print("chart files are up to date")
        return 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
