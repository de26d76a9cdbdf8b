"""Project-wide test configuration: the external tools folder on PATH and shared paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The Kubernetes API emulator fixtures (kube_cluster, kube_cluster_auth, ...) come from the
# edgemodel-dev distribution's pytest plugin (entry point pytest11), loaded by its installation.

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = ROOT / ".tools" / "bin"

os.environ["PATH"] = f"{TOOLS_BIN}{os.pathsep}{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


def require_tool(name: str) -> Path:
    """Path of an external tool installed by scripts/install-tools.sh; fails (never skips) when missing."""
    import shutil

    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make tools` (scripts/install-tools.sh) first", pytrace=False)
    return Path(found)
