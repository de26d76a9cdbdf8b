"""The local kubelet with the podman runtime (``edgemodel dev up --container-runtime podman``): the
operator's real conversion Job spec runs as a real container of the converter image, so the user,
fsGroup, Secret file modes, read-only root file system and volumes are those of a real node."""

from __future__ import annotations

import base64
import copy
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgemodel_operator import jobs
from edgemodel_operator.settings import OperatorSettings

from edgemodel.api import EdgeModelSpec
from edgemodel.demo.processes import Process, wait_http
from edgemodel.dev.cluster import LocalCluster
from edgemodel.dev.images import Built
from edgemodel.dev.net import free_port
from edgemodel.examples_models import DigitsExample
from edgemodel.signing import generate_keypair

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
