"""The demo's non-interactive path end to end: what `make demo` shows, checked in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

EDGEMODEL = str(Path(sys.executable).parent / "edgemodel")


def test_demo_runs_the_whole_loop_and_rolls_back_the_slow_revision(tmp_path: Path) -> None:
    require_tool("kubectl")
    require_tool("prometheus")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [EDGEMODEL, "demo", "--plain", "--workdir", str(workdir), "--traffic-seconds", "5", "--epochs", "30"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "edgemodel.edgemodel.io/digits created" in out
    assert "Revision 1 is Available on 3/3 nodes" in out
    assert "Rolled back" in out
    assert "rolled back to revision 1" in out
    assert "demo finished" in out
    served = re.search(r"served accuracy on held-out digits\s*│\s*([\d.]+)%", out)
    assert served is not None, out[-3000:]
    assert float(served.group(1)) > 90.0
    assert re.search(r"revision history\s*│\s*r1 Available, r2 RolledBack", out), out[-3000:]
    assert re.search(r"Prometheus p95 \(revision 1\)\s*│\s*[\d.]+ ms", out), "Prometheus answered the p95 query"
    # Everything it started is stopped: no process still holds the demo folder open.
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
