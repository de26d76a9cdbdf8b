"""`edgemodel agent` as a process: standalone serving, clean shutdown, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as httpclient

from edgemodel_dev.net import free_port
from edgemodel_dev.polling import http_ok, wait_until

EDGEMODEL = [sys.executable, "-m", "edgemodel.cli"]


def test_standalone_agent_serves_files_and_stops_on_sigterm(model_files: dict[str, Path]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*EDGEMODEL, "agent", "--model", f"affine={model_files['affine1']}", "--model", f"affine:2={model_files['affine2']}",
         "--model", f"gather={model_files['gather']}", "--port", str(port), "--batching"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "EDGEMODEL_AGENT_MAX_BATCH_SIZE": "4"},
    )  # fmt: skip
    try:
        wait_until("the agent to be ready", lambda: http_ok(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1), 60,
                   interval=0.1, process=proc)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        assert client.infer("affine", [inp]).as_numpy("y").tolist() == [[4.0] * 4]
        assert client.get_model_config("gather")["max_batch_size"] == 4  # env var setting applied
        client.close()
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'edgemodel_requests_total{code="200",model="affine",namespace="",provider="CPUExecutionProvider",version="2"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Stopping: draining in-flight requests" in out
    assert "Unloaded model affine version 2" in out


def test_bad_flags_print_one_line_without_traceback(tmp_path: Path) -> None:
    cases = [
        (["agent"], "nothing to serve"),
        (["agent", "--model", "nope"], "expected NAME[:VERSION]=PATH.onnx"),
        (["agent", "--model", f"m={tmp_path / 'missing.onnx'}"], "is not a file"),
        (["agent", "--model", f"m={tmp_path}/x", "--port", "99999"], "port: Input should be less than or equal to 65535"),
        (["agent", "--kubeconfig", str(tmp_path / "kc"), "--node-name", "n1"], "--public-key is required"),
        (["agent", "--kubeconfig", str(tmp_path / "kc")], "--node-name (or NODE_NAME"),
        (["agent", "--in-cluster", "--node-name", "n1", "--label", "bad key=1"], "Kubernetes label syntax"),
        (["agent", "--model", f"m={tmp_path}/x", "--split-port", "0", "--split-tls-ca", str(tmp_path / "ca.pem")],
         "--split-tls-ca, --split-tls-cert and --split-tls-key (EDGEMODEL_AGENT_SPLIT_TLS_*): give all three"),
    ]
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not onnx")
    cases.append((["agent", "--model", f"m={bad_model}", "--port", "0"], "ONNX Runtime cannot load"))
    for argv, message in cases:
        result = subprocess.run([*EDGEMODEL, *argv], capture_output=True, text=True, timeout=60, check=False,
                                env={k: v for k, v in os.environ.items() if k != "NODE_NAME"})  # fmt: skip
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr, (argv, result.stderr)


def test_node_name_and_kubeconfig_from_the_environment_select_cluster_mode(tmp_path: Path) -> None:
    env = {**os.environ, "NODE_NAME": "edge-7", "KUBECONFIG": str(tmp_path / "kubeconfig")}
    result = subprocess.run([*EDGEMODEL, "agent"], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 2
    assert "--public-key is required with a cluster" in result.stderr
