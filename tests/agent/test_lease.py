"""The agent's heartbeat is a Lease named after its node; its EdgeAgent status is written only on change;
an agent may renew only its own Lease (the emulator's per-agent rules, with auth on)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.app import Agent
from edge_agent.control.lease import LeaseRenewer, lease_path
from edgemodel.kube import ApiError, KubeClient, load_kubeconfig
from edgemodel_dev.cluster import LocalCluster
from tests.agent.artifacts import ArtifactStore, Keys
from tests.agent.polling import eventually
from tests.agent.test_control_plane import NODE, agent_settings, assign, edgeagent, keys, store, wait_affine  # noqa: F401

LEASE = ("coordination.k8s.io/v1", "Lease")


@pytest.fixture
def cluster(kube_cluster_auth: LocalCluster) -> LocalCluster:
    kube_cluster_auth.apply_crds()
    kube_cluster_auth.add_nodes(2)
    return kube_cluster_auth


@pytest.fixture
async def started(cluster: LocalCluster, keys: Keys, tmp_path: Path) -> AsyncIterator[Agent]:  # noqa: F811
    agent = Agent(agent_settings(cluster, keys, tmp_path / "cache"))
    await agent.start()
    yield agent
    await agent.stop()


def lease(cluster: LocalCluster, node: str = NODE, namespace: str = "default") -> dict[str, Any]:
    return cluster.get(*LEASE, node, namespace) or {}


def conditions(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (edgeagent(cluster).get("status") or {}).get("conditions") or []}


async def test_the_lease_is_renewed_and_an_unchanged_status_is_not_rewritten(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, model_files: dict[str, Path], started: Agent  # noqa: F811
) -> None:
    first = await eventually(lambda: lease(cluster).get("spec") and lease(cluster), "the Lease")
    assert first["metadata"]["labels"] == {"edgemodel.io/heartbeat": "true"}
    assert first["spec"]["holderIdentity"] == NODE
    assert first["spec"]["leaseDurationSeconds"] == 40
    await eventually(lambda: conditions(cluster).get("LeaseRenewed", {}).get("status") == "True", "LeaseRenewed")
    await asyncio.sleep(1.5)  # let the start-up writes settle
    version, writes = edgeagent(cluster)["metadata"]["resourceVersion"], started.control.status_writes  # type: ignore[union-attr]
    renewals = [lease(cluster)["spec"]["renewTime"]]
    for _ in range(3):  # three renewals (heartbeat_interval_s=1), no status write in between
        renewals.append(await eventually(lambda: (t := lease(cluster)["spec"]["renewTime"]) != renewals[-1] and t,
                                         "the next renewal", timeout=5))
    assert renewals == sorted(renewals)
    assert len(set(renewals)) == 4
    assert edgeagent(cluster)["metadata"]["resourceVersion"] == version, "status rewritten without a change"
    assert started.control.status_writes == writes  # type: ignore[union-attr]

    assign(cluster, [store.publish(keys, model_files["affine1"], "affine", 1)])  # a real change is written
    await wait_affine(cluster, "Ready")
    assert started.control.status_writes > writes  # type: ignore[union-attr]
    assert lease(cluster)["metadata"]["uid"] == first["metadata"]["uid"], "renewed in place, never re-created"


async def test_a_failing_renewal_leaves_a_condition_and_a_log_line(
    cluster: LocalCluster, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.control.lease")
    agent = Agent(agent_settings(cluster, keys, tmp_path / "cache", lease_namespace="kube-system"))
    await agent.start()
    try:
        failed = await eventually(lambda: (c := conditions(cluster).get("LeaseRenewed")) and c["status"] == "False"
                                  and c, "LeaseRenewed=False")
        assert failed["reason"] == "RenewFailed"
        assert "kube-system/edge-0" in failed["message"]
        assert "403" in failed["message"]
        assert any("Could not renew Lease kube-system/edge-0" in r.getMessage() for r in caplog.records)
        assert lease(cluster, namespace="kube-system") == {}
    finally:
        await agent.stop()


async def test_an_agent_may_renew_only_its_own_lease(cluster: LocalCluster, tmp_path: Path) -> None:
    own = KubeClient(load_kubeconfig(cluster.agent_kubeconfig("edge-0")))
    other = LeaseRenewer(KubeClient(load_kubeconfig(cluster.agent_kubeconfig("edge-1"))), "default", "edge-1")
    try:
        renewer = LeaseRenewer(own, "default", "edge-0")
        created = await renewer.renew()
        renewed = await renewer.renew()
        assert int(renewed["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
        await other.renew()
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "edge-1"},
                "spec": {"holderIdentity": "edge-0"}}
        for attempt in (
            lambda: own.put(lease_path("default", "edge-1"), {**body, "metadata": lease(cluster, "edge-1")["metadata"]}),
            lambda: own.create(lease_path("default"), {**body, "metadata": {"name": "edge-9"}}),
            lambda: own.get(lease_path("default", "edge-1")),
            lambda: own.create(lease_path("kube-node-lease"), {**body, "metadata": {"name": "edge-0"}}),
            lambda: own.request("DELETE", lease_path("default", "edge-0")),
            lambda: own.get(lease_path("default")),
        ):
            with pytest.raises(ApiError) as refused:
                await attempt()
            assert refused.value.status == 403, refused.value
        assert lease(cluster, "edge-1")["spec"]["holderIdentity"] == "edge-1"
    finally:
        await own.close()
        await other.client.close()
