"""Simulated edge nodes: Node objects with labels and capacity, and one managed process per node
(the edge agent) that tests can stop, kill and restart to simulate outages."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemodel_dev.builtin_kinds import now
from edgemodel_dev.podenv import venv_bin

JSON = dict[str, Any]
log = logging.getLogger(__name__)

EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
SITE_LABEL = "edgemodel.io/site"


def node_object(
    name: str,
    labels: Mapping[str, str] | None = None,
    *,
    arch: str = "amd64",
    cpu: str = "4",
    memory: str = "8Gi",
    capacity: Mapping[str, str] | None = None,
    role: str | None = "edge",
) -> JSON:
    """A Ready Node as a kubelet would register it."""
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
    }
    if role:
        all_labels[f"node-role.kubernetes.io/{role}"] = "true"
    all_labels.update(labels or {})
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    resources.update(capacity or {})
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "the local kubelet is posting ready status", "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available", "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp},
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": arch, "operatingSystem": "linux", "osImage": "edgemodel local kubelet",
                "kernelVersion": os.uname().release, "kubeletVersion": "v1.36.0-edgemodel-dev",
                "kubeProxyVersion": "", "containerRuntimeVersion": "local-process://1",
                "machineID": name, "systemUUID": name, "bootID": name,
            },
        },
    }


def node_lease(name: str) -> JSON:
    """The node's heartbeat Lease in ``kube-node-lease`` (what `kubectl describe node` shows)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now().replace("Z", ".000000Z")},
    }


class NodeProcess:
    """One managed process for one node, with its output in a log file."""

    def __init__(self, node: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
                 cwd: Path | None = None) -> None:
        self.node = node
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- start #{self.starts + 1} at {now()}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.cwd, start_new_session=True,
            )
        self.starts += 1
        log.info("Started the process of node %s (pid %d): %s", self.node, self.process.pid, " ".join(self.argv))

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("The process of node %s ignored SIGTERM for %.0fs; killing it", self.node, timeout)
            self._signal(signal.SIGKILL)
            self.process.wait(10)
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash or power loss); returns the exit code."""
        if self.process is None:
            return None
        self._signal(signal.SIGKILL)
        self.process.wait(10)
        return self.process.returncode

    def pause(self) -> None:
        """SIGSTOP: the process hangs (a network partition without a crash)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start()

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 30.0) -> bool:
        """Whether ``text`` appears in the process output within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.running:
                return text in self.output()
            time.sleep(0.05)
        return False


CommandFor = Callable[[str], Sequence[str]] | Sequence[str]


def expand_command(command: CommandFor, node: str) -> list[str]:
    """A command template (``{node}`` is replaced) or a callable ``node -> argv``; ``edgemodel`` and
    ``python`` resolve to the project's venv."""
    argv = list(command(node)) if callable(command) else [str(a).replace("{node}", node) for a in command]
    if argv and argv[0] in ("python", "python3"):
        import sys

        argv[0] = sys.executable
    elif argv and "/" not in argv[0] and (venv_bin() / argv[0]).exists():
        argv[0] = str(venv_bin() / argv[0])
    return argv
