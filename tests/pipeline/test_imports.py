"""The pipeline's agent-side modules stay light; its planner is stdlib only."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_stage_server_imports_neither_onnx_nor_torch() -> None:
    result = run(
        "import sys, edgemodel.split.stages; "
        "bad = [m for m in ('onnx', 'torch', 'kopf', 'onnxruntime') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chain_planner_is_stdlib_only() -> None:
    result = run(
        "import sys, edgemodel.split.chain_planner, edgemodel.split.chain_devices; "
        "bad = [m for m in ('numpy', 'onnx', 'onnxruntime', 'aiohttp') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert result.returncode == 0, result.stdout + result.stderr
