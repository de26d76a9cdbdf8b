"""The local kubelet with the podman runtime (``edgemodel-dev up --container-runtime podman``): the
operator's real conversion Job spec runs as a real container of the converter image, so the user,
fsGroup, Secret file modes, read-only root file system and volumes are those of a real node."""

from __future__ import annotations

import base64
import copy
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgemodel.api import EdgeModelSpec
from edgemodel.signing import generate_keypair
from edgemodel_dev.cluster import LocalCluster, find_kubectl
from edgemodel_dev.demo.processes import Process, wait_http
from edgemodel_dev.examples_models import DigitsExample
from edgemodel_dev.images import Built
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import wait_until
from edgemodel_operator import jobs
from edgemodel_operator.settings import OperatorSettings

pytestmark = pytest.mark.timeout(1800)  # a cold machine builds the images first (about 10 min)
NS = "ml"
FAST = ["--latency-runs", "5", "--latency-budget", "0.05", "--threads", "1", "--no-plot"]



@pytest.fixture
def model_server(digits: DigitsExample) -> Iterator[str]:
    """The model files over HTTP on 127.0.0.1 (a file:// path of the host is no path in a container)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(digits.directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cluster(tmp_path: Path, images: dict[str, Built]) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "kube", container_runtime="podman", job_backoff=0.2) as cluster:
        yield cluster


def conversion_job(cluster: LocalCluster, digits: DigitsExample, models_url: str, store_url: str, image: str,
                   revision: int) -> dict[str, Any]:
    doc = digits.manifest(name="digits", namespace=NS, max_accuracy_drop=0.03)
    spec = doc["spec"]
    spec["source"]["uri"] = f"{models_url}/model.pt"
    spec["optimization"]["int8"]["calibrationDataUri"] = f"{models_url}/calib.npz"
    spec["validation"]["dataUri"] = f"{models_url}/val.npz"
    owner = {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
             "metadata": {"name": "digits", "namespace": NS, "uid": "u-1", "generation": 1}}
    settings = OperatorSettings(store_url=store_url, converter_image=image,
                                signing_key_secret="edgemodel-signing", converter_cpu_limit="2",
                                converter_memory_limit="3Gi", converter_backoff_limit=0)
    job = jobs.build_conversion_job(owner, EdgeModelSpec.model_validate(spec), revision, "h", settings)
    job["metadata"].pop("ownerReferences")  # no EdgeModel object here: the GC would collect the Job
    job["metadata"]["namespace"] = NS
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["args"] += FAST
    return job


def finished(cluster: LocalCluster, name: str) -> dict[str, Any]:
    job = cluster.get("batch/v1", "jobs", name, NS)
    return job if job and jobs.job_state(job).phase != jobs.JobPhase.RUNNING else {}


def pods_of(cluster: LocalCluster, job: str) -> list[dict[str, Any]]:
    return [p for p in cluster.list_objects("v1", "pods", NS) if p["metadata"]["labels"].get("job-name") == job]


def test_the_operators_conversion_job_runs_in_a_real_container(
        cluster: LocalCluster, images: dict[str, Built], digits: DigitsExample, model_server: str,
        tmp_path: Path) -> None:
    store_port = free_port()
    store = Process("store", ["edgemodel", "store", "--root", str(tmp_path / "store"), "--port", str(store_port)],
                    tmp_path / "logs")
    try:
        wait_http(f"http://127.0.0.1:{store_port}/healthz", 30, store, store.log)
        store_url = f"http://127.0.0.1:{store_port}"
        generate_keypair(tmp_path / "private.pem", tmp_path / "public.pem")
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edgemodel-signing", "namespace": NS},
                        "data": {"private.pem": base64.b64encode((tmp_path / "private.pem").read_bytes()).decode()}})

        # The Job spec before issue 14 item 3 was fixed: no runAsUser/fsGroup, key 0400: fails for real.
        broken = conversion_job(cluster, digits, model_server, store_url, images["converter"].ref, 1)
        broken["metadata"]["name"] = "digits-broken"
        pod_spec = broken["spec"]["template"]["spec"]
        pod_spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        pod_spec["volumes"][0]["secret"]["defaultMode"] = 0o400
        cluster.create(broken)
        job = cluster.wait_for(lambda: finished(cluster, "digits-broken"), timeout=240, what="the broken Job")
        assert jobs.job_state(job).phase == jobs.JobPhase.FAILED
        result = jobs.result_from_pods(pods_of(cluster, "digits-broken"))
        assert result is not None
        assert (result.ok, result.reason) == (False, "SigningKeyUnreadable"), result
        assert "Permission denied" in result.message

        # The operator's Job as it is: converts in the container and uploads to the store.
        job_obj = copy.deepcopy(conversion_job(cluster, digits, model_server, store_url, images["converter"].ref, 1))
        name = job_obj["metadata"]["name"]
        cluster.create(job_obj)
        job = cluster.wait_for(lambda: finished(cluster, name), timeout=600, what="the conversion Job")
        pods = pods_of(cluster, name)
        status = pods[0]["status"]["containerStatuses"][0]
        assert jobs.job_state(job).phase == jobs.JobPhase.SUCCEEDED, status
        assert status["containerID"].startswith("podman://"), status
        result = jobs.result_from_pods(pods)
        assert result is not None
        assert result.ok, result
        assert (tmp_path / "store" / NS / "digits" / "1" / "manifest.json").is_file()
        assert result.reason == "Converted"
        assert [a.hardware_class for a in result.artifacts] == ["cpu"], result
    finally:
        store.stop()


JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: whoami, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, fsGroup: 3000}
      containers:
      - name: main
        image: IMAGE
        command: [python, -c]
        args: ["import os, pathlib; print(os.getuid(), os.getgid(), sorted(os.getgroups()), os.listdir('/etc/cfg'));
                pathlib.Path('/usr/x').touch()"]
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: cfg, mountPath: /etc/cfg}]
      volumes: [{name: cfg, configMap: {name: cfg}}]
"""


def test_dev_up_container_runtime_podman_runs_job_pods_from_their_image(
        tmp_path: Path, images: dict[str, Built]) -> None:
    """The CLI flag: a Job's pod runs as the image's user with fsGroup, on a read-only root file system."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgemodel_dev.cli", "up", "--port", "0", "--nodes", "0", "--no-crds",
         "--state-dir", str(state), "--container-runtime", "podman"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("running; press Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        env = dict(os.environ, KUBECONFIG=str(state / "kubeconfig"), HOME=str(tmp_path))

        def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
            return subprocess.run([str(find_kubectl()), *args], input=stdin, capture_output=True, text=True, env=env,
                                  timeout=60, check=check).stdout

        kubectl("create", "configmap", "cfg", "--from-literal=a=A")
        kubectl("apply", "-f", "-", stdin=JOB.replace("IMAGE", images["agent"].ref))

        def failed() -> str:
            return kubectl("get", "job", "whoami", "-o", "jsonpath={.status.failed}", check=False).strip()

        wait_until("the Job's pod to finish", failed, 120)
        logs = kubectl("logs", "job/whoami")
        assert "10001 10001 [3000, 10001] ['a']" in logs, logs
        assert "Read-only file system: '/usr/x'" in logs, logs
        pod_status = json.loads(kubectl("get", "pods", "-l", "job-name=whoami", "-o", "json"))["items"][0]["status"]
        assert pod_status["containerStatuses"][0]["containerID"].startswith("podman://")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
