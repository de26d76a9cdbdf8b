"""The real processes with ``secureAggregation: true``: ``python -m edgemodel.federated.server`` and 10
``python -m edgemodel.federated.client`` (TLS with a throwaway CA, digits IID), 3 clients SIGKILLed after a round
all 10 joined: training goes on with the 7 survivors and finishes every round, each one aggregated by SecAgg+."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgemodel_dev.federated_digits import write_digits
from edgemodel_dev.net import free_port, is_free
from edgemodel_operator.federated_pki import make_server_tls

NODES = [f"edge-{i}" for i in range(10)]
KILLED = NODES[-3:]
ROUNDS = 6


def _free_port() -> int:
    """A free port whose successor is free too (the server's /status listens on port + 1)."""
    while True:
        port = free_port()
        if is_free(port + 1):
            return port


def _status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def test_secure_training_survives_three_of_ten_clients_killed(tmp_path: Path) -> None:
    files = write_digits(tmp_path / "data", NODES, iid=True, arch="mlp")
    make_server_tls("secure-test", ["127.0.0.1"]).write_dir(tmp_path)
    port = _free_port()
    obj = {
        "apiVersion": "edgemodel.io/v1alpha1",
        "kind": "FederatedTraining",
        "metadata": {"name": "secure", "namespace": "test", "uid": "secure-test"},
        "spec": {
            "model": {"uri": files.model.resolve().as_uri()},
            "data": {"path": "/unused/train.npz"},
            "validation": {"dataUri": files.validation.resolve().as_uri()},
            "training": {"epochs": 1, "batchSize": 16, "learningRate": 0.1},
            "rounds": ROUNDS,
            "minClients": 5,
            "maxDropFraction": 0.5,
            "roundTimeoutSeconds": 30,
            "secureAggregation": True,
            "port": port,
        },
    }
    env = {**os.environ, "EDGEMODEL_FEDERATED_OBJECT": json.dumps(obj), "OMP_NUM_THREADS": "1"}
    status_file = tmp_path / "status.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "edgemodel.federated.server", "--bind", "127.0.0.1", "--tls-dir", str(tmp_path),
         "--output", str(tmp_path / "trained.pt"), "--status-file", str(status_file), "--linger-seconds", "0"],
        env={**env, "EDGEMODEL_TERMINATION_LOG": str(tmp_path / "server.termination")},
        stdout=(logs / "server.log").open("wb"), stderr=subprocess.STDOUT,
    )
    clients = {
        node: subprocess.Popen(
            [sys.executable, "-m", "edgemodel.federated.client", "--node", node, "--server", f"127.0.0.1:{port}",
             "--ca", str(tmp_path / "ca.pem"), "--data", str(files.shards[node])],
            env={**env, "EDGEMODEL_TERMINATION_LOG": str(tmp_path / f"{node}.termination")},
            stdout=(logs / f"{node}.log").open("wb"), stderr=subprocess.STDOUT,
        )
        for node in NODES
    }
    try:
        deadline = time.monotonic() + 240
        # A round starts once spec.minClients are connected: wait for one that all 10 joined, then kill 3.
        while not any(len(r["participating"]) == len(NODES) for r in _status(status_file).get("rounds") or []):
            assert server.poll() is None, (logs / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no round with all nodes"
            time.sleep(0.05)
        full = len(_status(status_file)["rounds"])
        assert full < ROUNDS - 1, "the nodes took too long to connect: no round left to show the dropout"
        time.sleep(0.2)  # into the next round
        for node in KILLED:
            clients[node].send_signal(signal.SIGKILL)
        assert server.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, (
            (logs / "server.log").read_text()[-3000:]
        )
        for node in NODES:
            code = clients[node].wait(timeout=20)
            assert code == (-signal.SIGKILL if node in KILLED else 0), (node, code)
    finally:
        for proc in [server, *clients.values()]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    status = _status(status_file)
    assert status["state"] == "Succeeded"
    rounds = status["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["aggregated"] for r in rounds), rounds
    assert rounds[full - 1]["participating"] == sorted(NODES)
    survivors = sorted(set(NODES) - set(KILLED))
    assert rounds[-1]["participating"] == survivors  # the killed nodes left the grid
    assert all(set(r["participating"]) >= set(survivors) for r in rounds[full:])
    assert rounds[-1]["accuracy"] > 0.5  # the MLP learns digits with secure aggregation (initial ~0.1)
    assert status["result"]["round"] == ROUNDS
    assert (tmp_path / "trained.pt").stat().st_size > 0
