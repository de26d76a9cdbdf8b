"""Continual learning end to end in the emulated cluster, timed from the drift alarm to the new revision Available.

    flock /work/bench.lock nice -n 10 .venv/bin/python -m bench.continual.e2e [--angle 30]

The system as real processes (``edgemodel_dev.demo.stack.SystemStack``): the Kubernetes API emulator with its
kubelet (Jobs run as local processes), the artifact store with an upload token, three edge agents (capture on,
uploads signed with the store token) and the operator (under exactly its RBAC). The digits CNN is converted and
rolled out; then the traffic turns into digits rotated by ``--angle`` degrees and the clients send the true
labels back (``POST /v2/models/digits/feedback``). Timed: the first drift alarm (an agent's ``driftSince``,
PSI against the revision's validation reference) -> the operator's trigger -> the training Job (fine-tune with
replay, gate) -> ``spec.source`` -> conversion -> canary -> revision 2 Available on the 3 agents.
The test ``tests/continual/test_e2e.py`` runs the same scenario and asserts what happened, never how fast.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import itertools
import json
import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml

from edgemodel_dev.auth import Identity, Rule
from edgemodel_dev.demo.stack import EDGEMODEL, SystemStack
from edgemodel_dev.examples_models import DigitsExample, load_digits_data, write_digits_example
from edgemodel_dev.net import free_port
from edgemodel_operator.rbac import PERMISSIONS

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
STORE_TOKEN = "continual-e2e-store-token"
STORE_TOKEN_SECRET = "edgemodel-store-token"


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    out = nd_rotate(images, angle, axes=(2, 3), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass
class Traffic:
    """Single-image inference requests (with ids) to every agent; after ``drift()`` rotated digits whose true
    labels are sent back as feedback to the agent that answered."""

    stack: ContinualStack
    x: np.ndarray
    y: np.ndarray
    x_rotated: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    drifted_at: float | None = None
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(endpoint, model version) -> answered requests."""
    correct: Counter[tuple[str, bool]] = field(default_factory=Counter)
    """(model version, drifted) -> correct answers; totals in ``answered``."""
    answered: Counter[tuple[str, bool]] = field(default_factory=Counter)
    feedback: Counter[int] = field(default_factory=Counter)
    """HTTP status of the feedback posts -> count."""
    failures: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._run, name="traffic", daemon=True)]
        self.threads[0].start()

    def drift(self) -> None:
        self.drifted_at = time.time()

    def _run(self) -> None:
        session = requests.Session()
        pending: dict[str, list[dict[str, Any]]] = {}
        endpoints: list[str] = []
        next_refresh = 0.0
        next_feedback = time.monotonic() + 0.5
        counter = itertools.count()
        order = itertools.cycle(range(len(self.x)))
        while not self.stop.is_set():
            if time.monotonic() > next_refresh:
                with contextlib.suppress(Exception):
                    endpoints = self.stack.endpoints()
                next_refresh = time.monotonic() + 2
            drifted = self.drifted_at is not None
            for endpoint in endpoints:
                i = next(order)
                image = (self.x_rotated if drifted else self.x)[i : i + 1]
                rid = f"r{next(counter)}"
                body = {"id": rid, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                               "data": image.ravel().tolist()}]}  # fmt: skip
                try:
                    answer = session.post(f"{endpoint}/v2/models/digits/infer", json=body, timeout=5)
                    answer.raise_for_status()
                    out = answer.json()
                except Exception:
                    self.failures += 1
                    continue
                version = str(out.get("model_version"))
                self.served[(endpoint, version)] += 1
                predicted = int(np.argmax(out["outputs"][0]["data"]))
                self.answered[(version, drifted)] += 1
                self.correct[(version, drifted)] += int(predicted == int(self.y[i]))
                if drifted:
                    pending.setdefault(endpoint, []).append({"id": rid, "label": int(self.y[i])})
            if time.monotonic() > next_feedback:
                for endpoint, labels in pending.items():
                    with contextlib.suppress(Exception):
                        reply = session.post(f"{endpoint}/v2/models/digits/feedback", json={"labels": labels},
                                             timeout=5)  # fmt: skip
                        self.feedback[reply.status_code] += 1
                pending = {}
                next_feedback = time.monotonic() + 0.5
            self.stop.wait(0.01)
        session.close()

    def accuracy(self, version: str, drifted: bool) -> float:
        n = self.answered[(version, drifted)]
        return self.correct[(version, drifted)] / n if n else float("nan")

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


class ContinualStack(SystemStack):
    """The emulated cluster, the store (with a token), three capturing agents and the operator."""

    def __init__(self, workdir: Path, tick_seconds: float = 1.0) -> None:
        super().__init__(workdir)
        self.tick_seconds = tick_seconds
        self.metrics_port = free_port()
        self.example: DigitsExample | None = None
        self.published: dict[str, str] = {}
        self.traffic: Traffic | None = None
        self.token_file = workdir / "store-token"

    def store_args(self) -> list[str]:
        return [*super().store_args(), "--token-file", str(self.token_file)]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(STORE_TOKEN)
        self.start_control_plane()
        self.cluster.apply({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": STORE_TOKEN_SECRET, "namespace": NS},
                            "data": {"token": base64.b64encode(STORE_TOKEN.encode()).decode()}})  # fmt: skip
        self.start_store()
        self.example = write_digits_example(self.dir / "models" / "digits", epochs=15)
        data = load_digits_data()
        train = self.dir / "models" / "digits" / "train.npz"
        np.savez(train, input=data.x_train, labels=data.y_train)
        self.publish(self.example.model_pt, self.example.val_npz, train)
        self.nodes = self.cluster.add_nodes(3)
        self.cluster.run_on_nodes(self.agent_command_continual())
        self.wait_for_agents(3, 60)
        rules = tuple(Rule(p.verbs, (p.api_group,), (p.resource,)) for p in PERMISSIONS)
        operator = Identity("system:serviceaccount:edgemodel:edgemodel-operator", ("system:serviceaccounts",), rules)
        kubeconfig = self.cluster.kubeconfig_for(self.cluster.add_token(operator), "edgemodel-operator")
        self.run_operator("operator", self.metrics_port, free_port(), [
            "--standalone", "--store-token-secret", STORE_TOKEN_SECRET, "--resync-seconds", "2",
            "--heartbeat-timeout-seconds", "20", "--continual-tick-seconds", str(self.tick_seconds),
        ], kubeconfig=kubeconfig, verbose=True)  # fmt: skip
        rotated = rotate(data.x_test, 30.0)
        self.traffic = Traffic(self, data.x_test, data.y_test, rotated)
        self.traffic.start()

    def set_angle(self, angle: float) -> None:
        assert self.traffic is not None
        self.traffic.x_rotated = rotate(self.traffic.x, angle)

    def agent_command_continual(self) -> list[str]:
        """The agent with capture to its node folder, uploads every second signed with the store token."""
        env = {
            "EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR": '"$EDGEMODEL_NODE_DIR/captures"',
            "EDGEMODEL_AGENT_CONTINUAL_STORE_URL": self.store_url,
            "EDGEMODEL_AGENT_CONTINUAL_UPLOAD_INTERVAL_S": "1",
            "EDGEMODEL_AGENT_CONTINUAL_MAX_CAPTURES_PER_S": "1000",
            "EDGEMODEL_AGENT_STORE_TOKEN_FILE": str(self.token_file),
            "EDGEMODEL_AGENT_STATS_INTERVAL_S": "1",
        }
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        command = self.agent_command()
        command[-1] = command[-1].replace("exec ", f"{prefix} exec ", 1)
        return command

    def publish(self, *files: Path) -> None:
        put = subprocess.run([EDGEMODEL, "store", "put", "--url", self.store_url, "--prefix", "sources/default/digits",
                              "--token-file", str(self.token_file), *map(str, files)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if put.returncode != 0:
            raise RuntimeError(put.stderr)
        self.published = {f.name: uri for f, uri in zip(files, put.stdout.split(), strict=True)}

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
        super().close()

    # the EdgeModel -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """examples/digits-edgemodel.yaml on this store, CPU only without INT8 (a short conversion), short
        canary windows, and continual learning on: a drift alarm lasting 1 s triggers a round."""
        doc = yaml.safe_load((ROOT / "examples" / "digits-edgemodel.yaml").read_text())
        spec = doc["spec"]
        spec["source"]["uri"] = self.published["model.pt"]
        spec["optimization"] = {"mode": "auto", "int8": {"enabled": False}, "targets": [{"hardwareClass": "cpu"}],
                                "measurement": {"rounds": 3}}  # fmt: skip
        spec["validation"]["dataUri"] = self.published["val.npz"]
        spec["validation"]["maxAccuracyDrop"] = 0.02
        spec["rollout"]["analysis"].update({"windowSeconds": 2, "minRequests": 5})
        spec["continual"] = {
            "enabled": True,
            "triggers": {"driftSeconds": 1},
            "replayDataUri": self.published["train.npz"],
            "minSamples": 150,
            "replayRatio": 8.0,
            "learningRate": 0.002,
            "epochs": 15,
            "minAccuracyGain": 0.05,
            "cooldownSeconds": 3600,
        }
        return doc

    def status(self) -> dict[str, Any]:
        return (self.edgemodel("digits") or {}).get("status") or {}

    def events(self) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events on the EdgeModel."""
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
                for e in self.cluster.list_objects("v1", "Event", NS)
                if (e.get("involvedObject") or {}).get("name") == "digits"
                and (e.get("involvedObject") or {}).get("kind") == "EdgeModel"]  # fmt: skip

    def continual_entries(self) -> list[dict[str, Any]]:
        return [e for a in self.agents() for e in (a.get("status") or {}).get("continual") or []
                if e.get("name") == "digits"]  # fmt: skip


def available(status: dict[str, Any], revision: int) -> bool:
    return status.get("revision") == revision and status.get("phase") == "Available" and status.get("ready") == "3/3"


@dataclass
class Timeline:
    drift_started: float = 0.0
    alarm: float | None = None
    """Earliest driftSince of revision 1 at or after the drift started (1 s resolution)."""
    triggered: float | None = None
    available: float | None = None
    moments: dict[str, float] = field(default_factory=dict)


def run_drift_to_available(stack: ContinualStack, timeout: float = 300.0) -> Timeline:
    """Revision 1 Available -> rotated traffic with feedback -> ... -> revision 2 Available; the timeline."""
    assert stack.traffic is not None
    stack.apply(stack.manifest(), "digits.yaml")
    stack.wait_for("revision 1 Available on 3 agents", lambda: available(stack.status(), 1), 240,
                   detail=lambda: json.dumps({k: stack.status().get(k) for k in ("phase", "revision", "ready")}))
    time.sleep(3)  # undrifted traffic on revision 1: the detectors see the validation-like stream first
    timeline = Timeline(drift_started=time.time())
    stack.traffic.drift()

    def step() -> bool:
        now = time.time()
        if timeline.alarm is None:
            since = [parse_time(e.get("driftSince")) for e in stack.continual_entries() if e.get("revision") == 1]
            seen = [s for s in since if s is not None and s >= int(timeline.drift_started)]
            if seen:
                timeline.alarm = min(seen)
                timeline.moments["alarm seen"] = now
        status = stack.status()
        rounds = (status.get("continual") or {}).get("rounds") or []
        if rounds and rounds[-1].get("outcome") in ("Rejected", "Failed"):
            raise AssertionError(f"continual round {rounds[-1]['round']} {rounds[-1]['outcome']}: "
                                 f"{rounds[-1].get('message')}")
        if timeline.triggered is None and (status.get("continual") or {}).get("activeJob"):
            timeline.triggered = now
        if status.get("revision") == 2 and "revision 2 opened" not in timeline.moments:
            timeline.moments["revision 2 opened"] = now
        if available(status, 2):
            timeline.available = now
            return True
        return False

    stack.wait_for("revision 2 Available on 3 agents", step, timeout,
                   detail=lambda: json.dumps({"status": {k: stack.status().get(k) for k in
                                                         ("phase", "revision", "ready", "continual")},
                                              "agents": stack.continual_entries()}, default=str)[:4000])  # fmt: skip
    return timeline


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--angle", type=float, default=30.0)
    parser.add_argument("--tick-seconds", type=float, default=1.0)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, ContinualStack(Path(tmp) / "stack", args.tick_seconds) as stack:
        stack.set_angle(args.angle)
        t = run_drift_to_available(stack)
        traffic = stack.traffic
        assert traffic is not None
        assert t.alarm is not None
        assert t.available is not None
        rounds = (stack.status().get("continual") or {}).get("rounds") or []
        result = {
            "angle": args.angle,
            "alarm_after_drift_s": round(t.alarm - t.drift_started, 1),
            "alarm_to_training_started_s": round((t.triggered or t.alarm) - t.alarm, 1),
            "alarm_to_available_s": round(t.available - t.alarm, 1),
            "round": rounds[-1] if rounds else None,
            "served_accuracy_rotated": {v: round(traffic.accuracy(v, True), 3) for v in ("1", "2")},
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cores": os.cpu_count(),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
