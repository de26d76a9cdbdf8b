"""``edgemodel operator --namespace team-a``: EdgeModels of team-a are converted and served, others untouched.

Real processes on the emulated cluster: the store, one agent, the operator restricted to one
namespace (kopf still watches the cluster-scoped EdgeAgents). An EdgeModel of the same name in
team-b gets no status, no finalizer and no conversion Job, and never reaches the node.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from edgemodel_dev.demo.stack import EM, SystemStack
from edgemodel_dev.examples_models import DigitsExample, write_digits_example
from edgemodel_dev.net import free_port
from tests.conftest import require_tool

T = TypeVar("T")
SERVED, IGNORED = "team-a", "team-b"


class NamespacedStack(SystemStack):
    """One edge node, the operator handling only :data:`SERVED`."""

    def start(self) -> None:
        self.start_control_plane()
        pem = (self.dir / "signing" / "private.pem").read_bytes()
        for ns in (SERVED, IGNORED):
            self.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            # The conversion Job runs in the EdgeModel's namespace and needs the signing key there.
            self.cluster.apply({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": self.signing_secret, "namespace": ns},
                                "data": {"private.pem": base64.b64encode(pem).decode()}})
        self.start_store()
        self.nodes = self.cluster.add_nodes(1)
        self.cluster.run_on_nodes(self.agent_command(), self.nodes)
        self.wait_for_agents(1, 90)
        self.run_operator("operator", free_port(), free_port(),
                          ["--standalone", "--namespace", SERVED, "--converter-backoff-limit", "1",
                           "--resync-seconds", "3"])

    def model(self, namespace: str) -> dict[str, Any]:
        return self.cluster.get(*EM, "digits", namespace) or {}



@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespacedStack]:
    require_tool("kubectl")
    with NamespacedStack(tmp_path_factory.mktemp("namespaced")) as s:
        yield s


@pytest.fixture(scope="module")
def example(stack: NamespacedStack) -> DigitsExample:
    return write_digits_example(stack.dir / "models" / "digits", epochs=10, val_samples=64)


def test_only_the_watched_namespace_is_converted_and_rolled_out(stack: NamespacedStack,
                                                                example: DigitsExample) -> None:
    docs = {}
    for ns in (IGNORED, SERVED):
        doc = example.manifest("digits", namespace=ns, max_accuracy_drop=0.05)
        doc["spec"]["rollout"] = {"strategy": "AllAtOnce", "analysis": {"windowSeconds": 1}}
        docs[ns] = doc
        assert "created" in stack.apply(doc, f"digits-{ns}.yaml")

    status = stack.wait_for(f"{SERVED}/digits Available", lambda: (s := stack.model(SERVED).get("status") or {})
                            .get("phase") == "Available" and s, 300)
    assert status["ready"] == "1/1"
    (agent,) = stack.agents()
    assert [(m["namespace"], m["name"], m["revision"]) for m in agent["spec"]["models"]] == [(SERVED, "digits", 1)]

    ignored = stack.model(IGNORED)
    assert "status" not in ignored, ignored.get("status")
    assert not ignored["metadata"].get("finalizers"), "the operator never touched it"
    jobs = {ns: stack.cluster.list_objects("batch/v1", "jobs", ns) for ns in (SERVED, IGNORED)}
    assert len(jobs[SERVED]) == 1
    assert jobs[IGNORED] == []

    stack.cluster.kubectl("delete", "edgemodel", "digits", "-n", SERVED, "--wait=true", "--timeout=60s")
    (agent,) = stack.agents()
    assert (agent.get("spec") or {}).get("models") == []
    assert stack.model(IGNORED)["metadata"]["name"] == "digits", "the other namespace's object is left alone"
