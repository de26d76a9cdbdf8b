"""The conversion Job manifest (checked against the real Kubernetes schema) and reading its outcome."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from edgemodel.api import ConversionResult
from edgemodel_operator import jobs
from edgemodel_operator.settings import OperatorSettings
from tests.operator.builders import artifacts, spec

OWNER = {
    "apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "1234-5678", "generation": 3,
                 "labels": {"team": "vision"}},
}


def settings(**kw: Any) -> OperatorSettings:
    base = {"store_url": "http://store.edgemodel:8080", "converter_image": "ghcr.io/x/edgemodel-convert:0.1",
            "signing_key_secret": "edgemodel-signing", "converter_cpu_limit": "3",
            "converter_memory_request": "1Gi"}
    base.update(kw)
    return OperatorSettings(**base)  # type: ignore[arg-type]


def test_job_name_is_deterministic_and_fits_63_characters() -> None:
    assert jobs.job_name("digits", 4) == "digits-r4-convert"
    long = "m" * 60
    name = jobs.job_name(long, 12)
    assert len(name) <= 63
    assert name.endswith("-r12-convert")
    assert name == jobs.job_name(long, 12)
    assert jobs.job_name("m" * 59 + "x", 12) != name


def test_conversion_job_follows_the_contract() -> None:
    job = jobs.build_conversion_job(OWNER, spec(), 4, "hash4", settings(store_token_secret="store-token"))
    assert job["metadata"]["name"] == "digits-r4-convert"
    assert job["metadata"]["namespace"] == "ml"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("EdgeModel", "digits", "1234-5678", True)
    assert job["metadata"]["annotations"]["edgemodel.io/spec-hash"] == "hash4"
    spec_ = job["spec"]
    assert spec_["backoffLimit"] == 2
    assert spec_["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    pod = spec_["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/x/edgemodel-convert:0.1"
    assert container["command"] + container["args"] == [
        "edgemodel", "convert", "--job", "--revision", "4", "--store-url", "http://store.edgemodel:8080",
        "--signing-key", "/var/run/edgemodel/signing/private.pem"]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "3", "memory": "4Gi"}}
    env = {e["name"]: e for e in container["env"]}
    obj = json.loads(env["EDGEMODEL_OBJECT"]["value"])
    assert obj["metadata"] == {"name": "digits", "namespace": "ml", "generation": 3}
    assert obj["spec"]["source"]["uri"] == "file:///models/digits.pt"
    assert obj["spec"]["rollout"]["steps"] == [10, 50, 100], "defaults are filled in"
    assert env["EDGEMODEL_STORE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "store-token", "key": "token"}
    assert pod["volumes"][0]["secret"]["secretName"] == "edgemodel-signing"
    assert spec_["template"]["metadata"]["labels"]["edgemodel.io/revision"] == "4"


def test_conversion_job_is_a_valid_kubernetes_job() -> None:
    job = jobs.build_conversion_job(OWNER, spec(), 1, "h", settings(converter_service_account="converter"))
    kubernetes_validate.validate(job, "1.30", strict=True)


@pytest.mark.parametrize(
    ("status", "phase", "reason"),
    [
        ({}, jobs.JobPhase.RUNNING, "Running"),
        ({"active": 1}, jobs.JobPhase.RUNNING, "Running"),
        ({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, jobs.JobPhase.SUCCEEDED, "Completed"),
        ({"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"}]},
         jobs.JobPhase.FAILED, "BackoffLimitExceeded"),
        ({"conditions": [{"type": "Failed", "status": "False"}]}, jobs.JobPhase.RUNNING, "Running"),
    ],
)
def test_job_state(status: dict[str, Any], phase: jobs.JobPhase, reason: str) -> None:
    state = jobs.job_state({"status": status})
    assert (state.phase, state.reason) == (phase, reason)


def pod(finished: str, message: str | None) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": 2, "finishedAt": finished}
    if message is not None:
        terminated["message"] = message
    return {"status": {"containerStatuses": [{"name": "convert", "state": {"terminated": terminated}}]}}


def test_result_comes_from_the_last_finished_pod() -> None:
    first = ConversionResult(ok=False, revision=2, reason="StoreUnavailable", message="store down", retryable=True)
    last = ConversionResult(ok=True, revision=2, artifacts=artifacts(2))
    pods = [pod("2025-01-01T00:00:05Z", first.model_dump_json(by_alias=True)),
            pod("2025-01-01T00:01:00Z", last.model_dump_json(by_alias=True)),
            {"status": {"containerStatuses": [{"name": "convert", "state": {"running": {}}}]}}]
    result = jobs.result_from_pods(pods)
    assert result is not None
    assert result.ok
    assert result.artifacts[0].hardware_class.value == "cpu"
    assert jobs.result_from_pods([pod("2025-01-01T00:00:05Z", "Traceback: not json")]) is None
    assert jobs.parse_result('{"ok": false, "reason": "InputMismatch", "message": "input x: want [1,8,8]"}') is not None


KEY_READER = ("import os, pathlib, sys; key = pathlib.Path(sys.argv[-1]); "
              "pathlib.Path(os.environ['EDGEMODEL_TERMINATION_LOG']).write_text(key.read_text())")


def test_the_non_root_converter_can_read_its_signing_key(kube_cluster: Any) -> None:
    """The Job's real pod spec (user, fsGroup, key volume and mount) on the local kubelet, which gives
    the key the owner and mode a real node would: only the command is replaced by a key reader."""
    job = jobs.build_conversion_job(OWNER, spec(), 1, "h", settings())
    pod_spec = job["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    key_path = container["args"][container["args"].index("--signing-key") + 1]
    container.update(command=["python", "-c", KEY_READER, key_path], args=[], env=[])
    kube_cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}})
    kube_cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edgemodel-signing", "namespace": "ml"},
                         "stringData": {"private.pem": "PRIVATE KEY"}})
    kube_cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "convert", "namespace": "ml"},
                         "spec": pod_spec})

    def finished() -> dict[str, Any] | None:
        pod = kube_cluster.get("v1", "pods", "convert", "ml")
        return pod if pod and pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    pod = kube_cluster.wait_for(finished, timeout=60, what="the converter pod to finish")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated.get("message")) == ("Succeeded", "PRIVATE KEY"), terminated
