"""The local kubelet and Job controller: pods as processes (env, downward API, volumes, working
dir, logs, termination messages, restarts, graceful deletion, scheduling) and Job semantics."""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

import pytest
from kubernetes import client

from edgemodel_dev.cluster import LocalCluster
from tests.dev.pods import fresh_namespace, wait_phase

SCRIPT = r"""
import json, os, pathlib, sys
out = {k: os.environ.get(k) for k in ("POD", "NS", "NODE", "IP", "TOKEN", "MODE", "GREETING", "CPU", "CM_a")}
out["cwd"] = os.getcwd()
out["argv"] = sys.argv[1:]
out["files"] = {p: pathlib.Path(p).read_text() for p in sys.argv[1:] if pathlib.Path(p).is_file()}
pathlib.Path(os.environ["SHARED"], "from-main").write_text("written by main")
print(json.dumps(out), flush=True)
pathlib.Path(os.environ["EDGEMODEL_TERMINATION_LOG"]).write_text('{"reason": "Converted"}')
"""


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": containers, **spec}}


def py(name: str, code: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "edgemodel:dev", "command": ["python", "-c", code], "args": list(args), **extra}


@pytest.fixture(scope="module")
def cluster(module_kube_cluster: LocalCluster) -> LocalCluster:
    return module_kube_cluster


@pytest.fixture
def ns(cluster: LocalCluster) -> str:
    return fresh_namespace(cluster, "k")


def test_pod_environment_volumes_logs_and_termination_message(cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"mode": "fast", "a": "A"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}})
    spec = pod("runner", [py("main", SCRIPT, "/etc/app/mode", "/secrets/token", "/work/in.txt", "$(GREETING)-x",
                             workingDir="/work",
                             env=[{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                  {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                  {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                  {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                  {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                                  {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                                  {"name": "GREETING", "value": "hello-$(POD)"},
                                  {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                                  {"name": "SHARED", "value": "/shared"}],
                             envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
                             resources={"limits": {"cpu": "2"}},
                             volumeMounts=[{"name": "cfg", "mountPath": "/etc/app"},
                                           {"name": "sec", "mountPath": "/secrets"},
                                           {"name": "work", "mountPath": "/work"},
                                           {"name": "shared", "mountPath": "/shared"}])],
               initContainers=[py("init", "import os, pathlib; pathlib.Path(os.environ['W'], 'in.txt')"
                                          ".write_text('from init')",
                                  env=[{"name": "W", "value": "/work"}],
                                  volumeMounts=[{"name": "work", "mountPath": "/work"}])],
               volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "sec", "secret": {"secretName": "sec"}},
                        {"name": "work", "emptyDir": {}}, {"name": "shared", "hostPath": {"path": "/var/shared"}}])
    core.create_namespaced_pod(ns, spec)
    done = wait_phase(cluster, ns, "runner")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"], state["message"]) == (0, "Completed", '{"reason": "Converted"}')
    assert done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    out = json.loads(core.read_namespaced_pod_log("runner", ns, container="main"))
    assert out["POD"] == "runner"
    assert out["NS"] == ns
    assert out["NODE"] == "edgemodel-dev"
    assert out["IP"] == "127.0.0.1"
    assert out["TOKEN"] == "s3cret"
    assert out["MODE"] == "fast"
    assert out["GREETING"] == "hello-runner"
    assert out["CPU"] == "2"
    assert out["CM_a"] == "A"
    assert out["argv"][-1] == "hello-runner-x", "$(VAR) is expanded in args"
    files = list(out["files"].values())
    assert files == ["fast", "s3cret", "from init"], "configMap, secret and emptyDir are mounted and shared"
    assert not any(a.startswith(("/etc/app", "/secrets", "/work")) for a in out["argv"][:3]), "paths are mapped"
    assert out["cwd"].endswith("/work"), "workingDir follows the volume mapping"
    host_file = cluster.kubelet.hostpath_root("edgemodel-dev") / "var" / "shared" / "from-main"
    assert host_file.read_text() == "written by main", "hostPath is a per-node folder"
    logs = cluster.kubectl("-n", ns, "logs", "runner", "-c", "main").stdout
    assert json.loads(logs)["POD"] == "runner"


def test_failed_container_and_fallback_termination_message(cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(ns, pod("fails", [py("main", "import sys; print('boom: bad input'); sys.exit(2)",
                                                    terminationMessagePolicy="FallbackToLogsOnError")]))
    done = wait_phase(cluster, ns, "fails")
    assert done["status"]["phase"] == "Failed"
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")
    assert terminated["message"].strip() == "boom: bad input"


def test_restart_on_failure_counts_restarts(cluster: LocalCluster, ns: str) -> None:
    code = ("import os, pathlib, sys; p = pathlib.Path(os.environ['D'], 'tries'); n = int(p.read_text() or 0) "
            "if p.exists() else 0; p.write_text(str(n + 1)); print('try', n); sys.exit(0 if n >= 2 else 1)")
    client.CoreV1Api(cluster.api_client()).create_namespaced_pod(ns, pod(
        "retry", [py("main", code, env=[{"name": "D", "value": "/data"}],
                     volumeMounts=[{"name": "d", "mountPath": "/data"}])],
        restartPolicy="OnFailure", volumes=[{"name": "d", "emptyDir": {}}]))
    done = wait_phase(cluster, ns, "retry")
    status = done["status"]["containerStatuses"][0]
    assert done["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 1
    previous = cluster.kubectl("-n", ns, "logs", "retry", "--previous").stdout
    assert previous.strip() == "try 1"


def test_graceful_deletion_sends_sigterm(cluster: LocalCluster, ns: str) -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('terminating', flush=True), sys.exit(0)))\n"
            "print('up', flush=True)\ntime.sleep(120)")
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(ns, pod("sleeper", [py("main", code)], terminationGracePeriodSeconds=10))
    wait_phase(cluster, ns, "sleeper", ("Running",))
    cluster.wait_for(lambda: "up" in core.read_namespaced_pod_log("sleeper", ns), what="the process to start")
    pid = cluster.kubelet.pid_of(ns, "sleeper")
    assert pid is not None
    log_file = cluster.kubelet.log_file(cluster.get("v1", "pods", "sleeper", ns) or {}, "main")
    cluster.kubectl("-n", ns, "delete", "pod", "sleeper", "--timeout=30s")
    assert cluster.get("v1", "pods", "sleeper", ns) is None
    assert "terminating" in log_file.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_edgemodel_and_python_resolve_to_the_project_venv(cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(ns, pod("venv", [
        {"name": "cli", "image": "x", "command": ["edgemodel", "--version"]},
        py("py", "import sys; print(sys.executable)")]))
    wait_phase(cluster, ns, "venv")
    assert core.read_namespaced_pod_log("venv", ns, container="cli").startswith("edgemodel ")
    assert core.read_namespaced_pod_log("venv", ns, container="py").strip() == sys.executable


def test_missing_command_fails_with_a_clear_message(cluster: LocalCluster, ns: str) -> None:
    client.CoreV1Api(cluster.api_client()).create_namespaced_pod(ns, pod("noimage", [{"name": "c", "image": "busybox"}]))
    done = wait_phase(cluster, ns, "noimage")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Failed"
    assert terminated["reason"] == "ContainerCannotRun"
    assert "runs no images" in terminated["message"]
    assert "command" in terminated["message"]


def test_node_selector_scheduling(cluster: LocalCluster, ns: str) -> None:
    nodes = cluster.add_nodes(1, prefix=f"{ns}-edge-", sites=["store-1"])
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(ns, pod("on-edge", [py("c", "print('hi')")],
                                       nodeSelector={"edgemodel.io/site": "store-1"}))
    core.create_namespaced_pod(ns, pod("nowhere", [py("c", "print('hi')")], nodeSelector={"missing": "label"}))
    done = wait_phase(cluster, ns, "on-edge")
    assert done["spec"]["nodeName"] == nodes[0]

    def unschedulable() -> bool:
        conditions = (cluster.get("v1", "pods", "nowhere", ns) or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c["reason"] == "Unschedulable" for c in conditions)

    cluster.wait_for(unschedulable, what="the pod to be reported unschedulable")


def test_job_retries_until_the_backoff_limit(cluster: LocalCluster, ns: str) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(ns, {"metadata": {"name": "flaky"}, "spec": {"backoffLimit": 2, "template": {
        "spec": {"restartPolicy": "Never", "containers": [py("c", "import sys; sys.exit(1)")]}}}})
    job = cluster.wait_for(lambda: (j := cluster.get("batch/v1", "jobs", "flaky", ns)) and any(
        c["type"] == "Failed" for c in j["status"].get("conditions", [])) and j, what="the job to fail")
    assert job["status"]["failed"] == 3
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "BackoffLimitExceeded")
    assert len(client.CoreV1Api(cluster.api_client()).list_namespaced_pod(ns).items) == 3
    result = cluster.kubectl("-n", ns, "wait", "--for=condition=failed", "job/flaky", "--timeout=10s")
    assert "condition met" in result.stdout


def test_job_completions_parallelism_and_ttl(cluster: LocalCluster, ns: str) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(ns, {"metadata": {"name": "multi"}, "spec": {
        "completions": 3, "parallelism": 2, "ttlSecondsAfterFinished": 1,
        "template": {"spec": {"restartPolicy": "Never", "containers": [py("c", "print('done')")]}}}})
    job = cluster.wait_for(lambda: (j := cluster.get("batch/v1", "jobs", "multi", ns)) and any(
        c["type"] == "Complete" for c in j["status"].get("conditions", [])) and j, what="the job to complete")
    assert job["status"]["succeeded"] == 3
    assert "completionTime" in job["status"]
    cluster.wait_for(lambda: cluster.get("batch/v1", "jobs", "multi", ns) is None, timeout=30,
                     what="ttlSecondsAfterFinished to delete the job")


def test_job_active_deadline_stops_the_pod(cluster: LocalCluster, ns: str) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(ns, {"metadata": {"name": "slow"}, "spec": {
        "activeDeadlineSeconds": 1, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [py("c", "import time; time.sleep(120)")]}}}})
    job = cluster.wait_for(lambda: (j := cluster.get("batch/v1", "jobs", "slow", ns)) and any(
        c["type"] == "Failed" for c in j["status"].get("conditions", [])) and j, timeout=30,
        what="the deadline to fail the job")
    assert next(c for c in job["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    cluster.wait_for(lambda: not cluster.kubelet.running_pods() or all(
        not p.startswith(ns) for p in cluster.kubelet.running_pods()), timeout=30, what="the pod's process to stop")


def test_pvc_folders_outlive_pods(cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "store"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    assert core.read_namespaced_persistent_volume_claim("store", ns).status.phase == "Bound"
    mount = {"volumeMounts": [{"name": "s", "mountPath": "/store"}]}
    volumes = [{"name": "s", "persistentVolumeClaim": {"claimName": "store"}}]
    core.create_namespaced_pod(ns, pod("writer", [py("w", "import pathlib; pathlib.Path('/store/a').write_text('kept')",
                                                     **mount)], volumes=volumes))
    wait_phase(cluster, ns, "writer")
    core.create_namespaced_pod(ns, pod("reader", [py("r", "import pathlib; print(pathlib.Path('/store/a').read_text())",
                                                     **mount)], volumes=volumes))
    wait_phase(cluster, ns, "reader")
    assert core.read_namespaced_pod_log("reader", ns).strip() == "kept"
    assert (cluster.state_dir / "pvcs" / ns / "store" / "a").read_text() == "kept"


def test_secret_data_is_base64_over_the_api(cluster: LocalCluster, ns: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert base64.b64decode(core.read_namespaced_secret("s", ns).data["k"]) == b"v"


def test_pod_failure_policy_fails_the_job_on_bad_input(cluster: LocalCluster, ns: str) -> None:
    """The conversion Job contract: exit 2 (bad input) must not be retried, exit 1 is retried."""
    batch = client.BatchV1Api(cluster.api_client())
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In",
                                                                "values": [2]}}]}
    code = ("import os, pathlib, sys; p = pathlib.Path(os.environ['D'], 'n'); n = int(p.read_text()) if p.exists() "
            "else 0; p.write_text(str(n + 1)); sys.exit(1 if n == 0 else 2)")
    batch.create_namespaced_job(ns, {"metadata": {"name": "convert"}, "spec": {
        "backoffLimit": 5, "podFailurePolicy": policy, "template": {"spec": {
            "restartPolicy": "Never", "volumes": [{"name": "d", "hostPath": {"path": f"/tmp/{ns}"}}],
            "containers": [py("c", code, env=[{"name": "D", "value": "/d"}],
                              volumeMounts=[{"name": "d", "mountPath": "/d"}])]}}}})
    job = cluster.wait_for(lambda: (j := cluster.get("batch/v1", "jobs", "convert", ns)) and any(
        c["type"] == "Failed" for c in j["status"].get("conditions", [])) and j, what="the job to fail")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "failed with exit code 2 matching FailJob rule at index 0" in failed["message"]
    assert job["status"]["failed"] == 2, "the first (exit 1) failure was retried, the second ended the job"
