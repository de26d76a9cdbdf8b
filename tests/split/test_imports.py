"""The modules the edge agent will import pull neither onnx nor torch (the agent image has neither)."""

from __future__ import annotations

import subprocess
import sys

AGENT_SIDE = ("codec", "remote", "runtime", "metrics", "planner", "shaping")


def test_agent_side_modules_are_light() -> None:
    modules = ", ".join(f"edgemodel.split.{m}" for m in AGENT_SIDE)
    code = (f"import sys, {modules}; "
            "bad = [m for m in ('onnx', 'torch', 'kopf', 'kubernetes', 'sklearn') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_planner_is_stdlib_only() -> None:
    code = ("import sys, edgemodel.split.planner; "
            "bad = [m for m in ('numpy', 'onnx', 'onnxruntime', 'aiohttp') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
