"""kopf's example operator flow against the emulator, with kopf's own KopfRunner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from edgemodel_dev.cluster import LocalCluster

OPERATOR = Path(__file__).with_name("kopf_example_operator.py")
CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: kopfexamples.kopf.dev}
spec:
  scope: Namespaced
  group: kopf.dev
  names: {kind: KopfExample, plural: kopfexamples, singular: kopfexample, shortNames: [kex]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
    additionalPrinterColumns:
    - {name: Duration, type: string, jsonPath: .spec.duration}
    - {name: Children, type: string, jsonPath: .status.create_fn.job}
"""


def example(cluster: LocalCluster) -> dict[str, Any]:
    return cluster.get("kopf.dev/v1", "kopfexamples", "kopf-example-1", "default") or {}


def test_kopf_example_flow(kube_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    kube_cluster.kubectl("apply", "-f", "-", stdin=CRD)
    args = ["run", "--all-namespaces", "--standalone", "--verbose", str(OPERATOR)]
    with KopfRunner(args, timeout=60) as runner:
        kube_cluster.kubectl("apply", "-f", "-", stdin="apiVersion: kopf.dev/v1\nkind: KopfExample\nmetadata:\n"
                                                      "  name: kopf-example-1\n  namespace: default\n"
                                                      "spec: {duration: 1m, field: value}\n")
        created = kube_cluster.wait_for(lambda: example(kube_cluster).get("status", {}).get("create_fn"),
                                        timeout=30, what="kopf to handle the creation")
        assert created == {"job": "kopf-example-1-child"}
        job = kube_cluster.get("batch/v1", "jobs", "kopf-example-1-child", "default") or {}
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("KopfExample", "kopf-example-1", True)
        kube_cluster.wait_for(lambda: example(kube_cluster).get("status", {}).get("childSucceeded") == 1,
                              timeout=60, what="the child Job to complete through the kubelet")
        assert kube_cluster.kubectl("logs", "job/kopf-example-1-child").stdout == "child of kopf-example-1: 1m\n"

        kube_cluster.kubectl("patch", "kex", "kopf-example-1", "--type=merge", "-p", '{"spec": {"field": "new"}}')
        kube_cluster.wait_for(lambda: example(kube_cluster).get("status", {}).get("update_fn") == {"field": "new"},
                              timeout=30, what="kopf to handle the update")
        table = kube_cluster.kubectl("get", "kex").stdout.split()
        assert table[:6] == ["NAME", "DURATION", "CHILDREN", "kopf-example-1", "1m", "kopf-example-1-child"]
        events = kube_cluster.kubectl("get", "events", "--field-selector", "reason=ChildCreated").stdout
        assert "Created Job kopf-example-1-child" in events

        kube_cluster.kubectl("delete", "kex", "kopf-example-1", "--timeout=30s")
        kube_cluster.wait_for(lambda: kube_cluster.get("batch/v1", "jobs", "kopf-example-1-child", "default") is None,
                              what="the child Job to be garbage-collected")
        kube_cluster.wait_for(lambda: not kube_cluster.list_objects("v1", "pods", "default"),
                              what="the Job's pod to be garbage-collected")
    assert runner.exception is None
    assert runner.exit_code == 0
    assert "Handler 'create_fn' succeeded" in runner.output
    assert "Handler 'update_fn' succeeded" in runner.output
    assert "Handler 'delete_fn' succeeded" in runner.output
    assert "Traceback" not in runner.output
