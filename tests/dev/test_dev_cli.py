"""`edgemodel-dev up`: the control plane for the demo, as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgemodel_dev.cluster import find_kubectl
from edgemodel_dev.polling import wait_until


def test_dev_up_serves_a_cluster_until_interrupted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgemodel_dev.cli", "up", "--port", "0", "--nodes", "2", "--sites", "a,b",
         "--state-dir", str(state), "--agent-command", f"python {Path(__file__).with_name('fake_agent.py')}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "running; press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert f"kubeconfig {state / 'kubeconfig'}" in output, output
        env = dict(os.environ, KUBECONFIG=str(state / "kubeconfig"), HOME=str(tmp_path))
        nodes = subprocess.run([str(find_kubectl()), "get", "nodes", "-L", "edgemodel.io/site", "--no-headers"],
                               capture_output=True, text=True, env=env, timeout=30, check=True).stdout
        sites = sorted(line.split()[0] + ":" + line.split()[-1] for line in nodes.splitlines() if "edge" in line.split()[2])
        assert sites == ["edge-0:a", "edge-1:b"]
        crds = subprocess.run([str(find_kubectl()), "get", "crds", "-o", "name"], capture_output=True, text=True,
                              env=env, timeout=30, check=True).stdout.split()
        assert "customresourcedefinition.apiextensions.k8s.io/edgemodels.edgemodel.io" in crds
        def agents() -> list[str] | None:
            names = subprocess.run([str(find_kubectl()), "get", "edgeagents", "-o", "name"], capture_output=True,
                                   text=True, env=env, timeout=30, check=True).stdout.split()
            return names if len(names) >= 2 else None

        found = wait_until("two EdgeAgents", agents, 30)
        assert found == ["edgeagent.edgemodel.io/edge-0", "edgeagent.edgemodel.io/edge-1"], "one agent per node"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, rest
        assert "stopping" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_dev_up_rejects_bad_arguments_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "edgemodel_dev.cli", "up", "--nodes", "-1", "--state-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "edgemodel-dev up: error: --nodes: must be 0 or more, got -1"
