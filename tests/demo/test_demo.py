"""The demo's non-interactive path end to end: what `make demo` shows, checked in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_tool

EDGEMODEL_DEV = str(Path(sys.executable).parent / "edgemodel-dev")


def test_demo_runs_the_whole_loop_rolls_back_the_slow_revision_and_splits_the_model(tmp_path: Path) -> None:
    require_tool("kubectl")
    require_tool("prometheus")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [EDGEMODEL_DEV, "demo", "--plain", "--workdir", str(workdir), "--traffic-seconds", "5", "--epochs", "30"],
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
    # The split chapter: the tail on the cloud node, heads on the edge nodes, then a cloud outage.
    assert "edgemodel.edgemodel.io/digits-split created" in out
    assert re.search(r"split inference cut\s*│\s*\S+ \(auto, wire int8\+zstd\)", out), out[-3000:]
    answers = re.search(r"Split inference: (\d+) answers,\s+0\s+errors,\s+accuracy\s+([\d.]+)%,\s+(\d+)\s+through\s+"
                        r"the\s+cloud\s+tail,\s+(\d+)\s+B\s+of\s+features\s+each", out)
    assert answers is not None, out[-3000:]
    assert min(int(answers.group(i)) for i in (1, 3, 4)) > 0, "answers, tail runs and feature bytes"
    assert float(answers.group(2)) > 90.0
    assert re.search(r"Cut check by the operator \(SplitCutCurrent\): (CutHolds|BetterCutMeasured):", out), out[-3000:]
    outage = re.search(r"While cloud-0 was down: (\d+) answers,\s+0\s+errors,\s+(\d+)\s+by\s+the\s+local\s+whole\s+model", out)
    assert outage is not None, out[-3000:]
    assert int(outage.group(1)) > 0
    assert int(outage.group(2)) == int(outage.group(1)), "every answer came from the local whole model"
    # Everything it started is stopped: no process still holds the demo folder open.
    leftovers = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
