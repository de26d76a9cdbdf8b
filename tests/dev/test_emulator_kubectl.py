"""The real kubectl v1.36 against the emulator: discovery, printer columns (server-side Table),
describe, explain, wait, logs, delete, create and get in every output format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgemodel_dev.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = """apiVersion: edgemodel.io/v1alpha1
kind: EdgeModel
metadata: {name: digits, namespace: default}
spec:
  source: {uri: "s3://models/digits.pt", format: TorchScript}
  inputs: [{name: input, shape: [-1, 1, 8, 8]}]
"""


@pytest.fixture(scope="module")
def cluster(module_kube_cluster: LocalCluster) -> LocalCluster:
    module_kube_cluster.kubectl("apply", "-f", str(REPO / "crds"))
    return module_kube_cluster


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_version_and_api_resources(cluster: LocalCluster, kubectl_path: Path) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["minor"] == "36"
    assert version["serverVersion"]["minor"] == "36"
    resources = cluster.kubectl("api-resources", "--api-group=edgemodel.io").stdout
    assert rows(resources)[1:] == [["edgeagents", "ea", "edgemodel.io/v1alpha1", "false", "EdgeAgent"],
                                   ["edgemodels", "em", "edgemodel.io/v1alpha1", "true", "EdgeModel"],
                                   ["federatedtrainings", "fedt", "edgemodel.io/v1alpha1", "true", "FederatedTraining"]]
    assert "jobs" in cluster.kubectl("api-resources", "--api-group=batch").stdout


def test_crd_resources_come_and_go_with_the_crd(cluster: LocalCluster) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gadgets.test.edgemodel.io"},
           "spec": {"group": "test.edgemodel.io", "scope": "Namespaced",
                    "names": {"kind": "Gadget", "plural": "gadgets", "shortNames": ["gd"]},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
    cluster.kubectl("wait", "--for=condition=established", "crd/gadgets.test.edgemodel.io", "--timeout=10s")
    cluster.kubectl("apply", "-f", "-", stdin="apiVersion: test.edgemodel.io/v1\nkind: Gadget\n"
                                              "metadata: {name: g1, namespace: default}\nspec: {a: 1}\n")
    assert rows(cluster.kubectl("get", "gd").stdout)[1][0] == "g1"
    cluster.kubectl("delete", "crd", "gadgets.test.edgemodel.io")
    gone = cluster.kubectl("get", "gadgets.test.edgemodel.io", check=False)
    assert gone.returncode != 0
    assert "the server doesn't have a resource type" in gone.stderr


def test_printer_columns_and_wide_output(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=EXAMPLE)
    cluster.kubectl("patch", "em", "digits", "--subresource=status", "--type=merge", "-p",
                    '{"status": {"phase": "Available", "revision": 2, "ready": "3/3"}}')
    table = rows(cluster.kubectl("get", "edgemodels").stdout)
    assert table[0] == ["NAME", "PHASE", "REVISION", "TARGET", "STEP", "READY", "AGE"]
    assert table[1][:3] == ["digits", "Available", "2"]
    assert "3/3" in table[1]
    cluster.create({"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": "edge-9"},
                    "spec": {}})
    cluster.kubectl("patch", "ea", "edge-9", "--subresource=status", "--type=merge", "-p",
                    '{"status": {"endpoint": "http://127.0.0.1:1", "capabilities": {"arch": "arm64"}}}')
    narrow = rows(cluster.kubectl("get", "ea", "edge-9").stdout)
    wide = rows(cluster.kubectl("get", "ea", "edge-9", "-o", "wide").stdout)
    assert narrow[0] == ["NAME", "CLASS", "ARCH", "REPORTED", "AGE"]
    assert wide[0] == ["NAME", "CLASS", "ARCH", "ENDPOINT", "REPORTED", "AGE"]
    assert wide[1][:4] == ["edge-9", "cpu", "arm64", "http://127.0.0.1:1"]
    labels = cluster.kubectl("get", "em", "digits", "--show-labels", "-L", "app").stdout
    assert "LABELS" in labels.splitlines()[0]


def test_get_as_json_yaml_name_and_jsonpath(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=EXAMPLE)
    as_json = json.loads(cluster.kubectl("get", "em", "digits", "-o", "json").stdout)
    as_yaml = yaml.safe_load(cluster.kubectl("get", "em", "digits", "-o", "yaml").stdout)
    assert as_json["metadata"]["uid"] == as_yaml["metadata"]["uid"]
    assert as_json["spec"]["rollout"]["strategy"] == "Canary", "defaults were applied"
    assert cluster.kubectl("get", "em", "-o", "name").stdout.strip() == "edgemodel.edgemodel.io/digits"
    listed = json.loads(cluster.kubectl("get", "em", "-o", "json").stdout)
    assert listed["kind"] == "List"
    assert listed["items"][0]["kind"] == "EdgeModel"
    assert cluster.kubectl("get", "em", "digits", "-o", "jsonpath={.spec.inputs[0].dtype}").stdout == "float32"
    assert rows(cluster.kubectl("get", "ns", "kube-system", "--no-headers").stdout)[0][:2] == ["kube-system",
                                                                                              "Active"]


def test_describe_custom_resource_with_events(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=EXAMPLE)
    uid = cluster.kubectl("get", "em", "digits", "-o", "jsonpath={.metadata.uid}").stdout
    cluster.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "digits.1", "namespace": "default"},
                    "involvedObject": {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", "name": "digits",
                                       "namespace": "default", "uid": uid},
                    "reason": "ConversionStarted", "message": "Created Job digits-r1-convert", "type": "Normal",
                    "source": {"component": "edgemodel-operator"}})
    described = cluster.kubectl("describe", "edgemodels", "digits").stdout
    assert "Name:         digits" in described
    assert "Source:" in described
    assert "s3://models/digits.pt" in described
    assert "ConversionStarted" in described
    assert "Created Job digits-r1-convert" in described


def test_explain_uses_the_served_openapi(cluster: LocalCluster) -> None:
    explained = cluster.kubectl("explain", "edgemodels.spec.rollout").stdout
    assert "Rollout strategy and analysis." in explained
    assert "maxUnavailable" in explained
    assert "enum: AllAtOnce, Canary" in explained
    pods = cluster.kubectl("explain", "pods.spec.containers.terminationMessagePath").stdout
    assert "FIELD: terminationMessagePath <string>" in pods


def test_create_wait_logs_and_delete_a_job(cluster: LocalCluster) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello", "namespace": "default"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "main", "image": "edgemodel:dev", "command": ["python", "-c", "print('hello from a pod')"]}]}}}}
    assert cluster.kubectl("create", "-f", "-", stdin=json.dumps(job)).stdout.strip() == "job.batch/hello created"
    cluster.kubectl("wait", "--for=condition=complete", "job/hello", "--timeout=60s")
    cluster.kubectl("wait", "--for=jsonpath={.status.succeeded}=1", "job/hello", "--timeout=10s")
    assert cluster.kubectl("logs", "job/hello").stdout == "hello from a pod\n"
    assert cluster.kubectl("logs", "-l", "job-name=hello", "--tail=1").stdout.strip() == "hello from a pod"
    table = rows(cluster.kubectl("get", "jobs,pods", "-l", "batch.kubernetes.io/job-name=hello").stdout)
    assert table[0] == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert table[1][:3] == ["job.batch/hello", "Complete", "1/1"]
    assert table[3][:3] == ["NAME", "READY", "STATUS"]
    assert table[4][2] == "Completed"
    described = cluster.kubectl("describe", "job", "hello").stdout
    assert "SuccessfulCreate" in described
    assert "1 Succeeded" in described
    cluster.kubectl("delete", "job", "hello", "--timeout=30s")
    assert "No resources found" in cluster.kubectl("get", "pods", "-l", "job-name=hello").stderr


def test_imperative_commands_with_protobuf_bodies(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "imperative")
    cluster.kubectl("-n", "imperative", "create", "configmap", "c", "--from-literal=a=1")
    cluster.kubectl("-n", "imperative", "create", "secret", "generic", "s", "--from-literal=key=v")
    cluster.kubectl("-n", "imperative", "create", "serviceaccount", "bot")
    cluster.kubectl("-n", "imperative", "label", "configmap", "c", "team=edge")
    got = json.loads(cluster.kubectl("-n", "imperative", "get", "configmap", "c", "-o", "json").stdout)
    assert got["data"] == {"a": "1"}
    assert got["metadata"]["labels"] == {"team": "edge"}
    assert cluster.kubectl("-n", "imperative", "get", "secret", "s", "-o", "jsonpath={.data.key}").stdout == "dg=="
    assert cluster.kubectl("auth", "can-i", "create", "pods").stdout.strip() == "yes"
    unsupported = cluster.kubectl("create", "job", "j", "--image=x", "--", "echo", check=False)
    assert unsupported.returncode != 0
    assert "kubectl create -f" in unsupported.stderr
    cluster.kubectl("delete", "namespace", "imperative", "--timeout=30s")


def test_every_name_of_the_crds(cluster: LocalCluster) -> None:
    """Singular, plural, short, qualified names and the `edge` category resolve as docs/testing.md says."""
    cluster.kubectl("apply", "-f", "-", stdin=EXAMPLE)
    cluster.create({"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": "edge-names"},
                    "spec": {}})
    for name in ("edgemodel", "edgemodels", "em", "edgemodels.edgemodel.io", "edgemodel.edgemodel.io"):
        assert cluster.kubectl("get", name, "digits", "-o", "name").stdout.strip() == "edgemodel.edgemodel.io/digits"
        assert "Name:         digits" in cluster.kubectl("describe", name, "digits").stdout
    for name in ("edgeagent", "edgeagents", "ea", "edgeagents.edgemodel.io"):
        assert cluster.kubectl("get", name, "edge-names", "-o", "name").stdout.strip() == \
            "edgeagent.edgemodel.io/edge-names"
    in_category = cluster.kubectl("get", "edge", "-o", "name").stdout.split()
    assert "edgemodel.edgemodel.io/digits" in in_category
    assert "edgeagent.edgemodel.io/edge-names" in in_category
    assert "edgemodel.edgemodel.io/digits" in cluster.kubectl("get", "all", "-o", "name").stdout.split()
    docs = (REPO / "docs" / "testing.md").read_text()
    assert "you must specify only one resource" not in docs, "docs/testing.md still describes the old category clash"
    assert "category `edge`" in docs


@pytest.mark.parametrize(("rollout", "message"), [
    ({"steps": [34, 67, 150]}, "spec.rollout.steps: every step must be a percentage between 1 and 100"),
    ({"steps": [34, 67]}, "spec.rollout.steps: the last step must be 100"),
    ({"steps": [67, 34, 100]}, "spec.rollout.steps: steps must rise strictly"),
    ({"maxUnavailable": "5"}, "spec.rollout.maxUnavailable: must be a number of at least 1 or a percentage"),
    ({"steps": [34, 67, 100], "maxUnavailable": 1}, ""),
])
def test_edgemodel_validate_and_the_api_server_agree(cluster: LocalCluster, tmp_path: Path,
                                                     rollout: dict[str, object], message: str) -> None:
    """The rules are CEL in the CRD and Python in edgemodel.api, generated from one list: same verdict, same text."""
    import subprocess
    import sys

    doc = yaml.safe_load(EXAMPLE)
    doc["metadata"]["name"] = "digits-rules"
    doc["spec"]["rollout"] = rollout
    path = tmp_path / "em.yaml"
    path.write_text(yaml.safe_dump(doc))
    edgemodel = str(Path(sys.executable).parent / "edgemodel")
    validated = subprocess.run([edgemodel, "validate", "-f", str(path)], capture_output=True, text=True, timeout=60,
                               check=False)
    applied = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    if not message:
        assert validated.returncode == 0, validated.stderr
        assert applied.returncode == 0, applied.stderr
        return
    assert validated.returncode != 0
    assert message in validated.stderr
    assert applied.returncode != 0, "the API server accepted what edgemodel validate refused"
    assert message in applied.stderr
