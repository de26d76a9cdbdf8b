"""The agent against the Kubernetes API emulator (with auth: the agent may touch only its own EdgeAgent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from edge_agent.app import Agent
from edge_agent.control.plane import grpc_endpoint
from edge_agent.grpc_proto import predict_v2_pb2 as pb
from edge_agent.settings import AgentSettings
from edgemodel.api import API_VERSION, GrpcEndpoint, ModelAssignment
from edgemodel_dev.cluster import LocalCluster
from tests.agent.artifacts import ArtifactStore, Keys, make_keys
from tests.agent.polling import eventually
from tests.agent.test_auth_tls import self_signed

NODE = "edge-0"
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    s = await ArtifactStore(tmp_path / "store").start()
    yield s
    await s.stop()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


@pytest.fixture
def cluster(kube_cluster_auth: LocalCluster) -> LocalCluster:
    kube_cluster_auth.apply_crds()
    kube_cluster_auth.add_nodes(1, labels={"hardware": "jetson"})
    return kube_cluster_auth


def agent_settings(cluster: LocalCluster, keys: Keys, cache: Path, **extra: Any) -> AgentSettings:
    return AgentSettings(
        port=0, node_name=NODE, kubeconfig=cluster.agent_kubeconfig(NODE), public_key=keys.public, cache_dir=cache,
        labels={"edgemodel.io/pool": "test"}, heartbeat_interval_s=1.0, status_min_interval_s=0.1, stats_interval_s=1.0,
        retry_backoff_s=0.05, download_attempts=2, **extra,
    )  # fmt: skip


@pytest.fixture
async def cluster_agent(cluster: LocalCluster, store: ArtifactStore, keys: Keys, tmp_path: Path) -> AsyncIterator[Agent]:
    """The agent of NODE started against the cluster (cache in tmp_path/cache) and stopped before the store."""
    agent = Agent(agent_settings(cluster, keys, tmp_path / "cache"))
    await agent.start()
    yield agent
    await agent.stop()



def edgeagent(cluster: LocalCluster) -> dict[str, Any]:
    """The agent's EdgeAgent as the API server has it ({} while it does not exist)."""
    return cluster.get(API_VERSION, "EdgeAgent", NODE) or {}


def assign(cluster: LocalCluster, models: list[ModelAssignment]) -> int:
    """Write spec.models as the operator would; returns the new generation."""
    obj = edgeagent(cluster)
    obj["spec"]["models"] = [m.to_k8s() for m in models]
    obj.pop("status", None)
    return int(cluster.apply(obj)["metadata"]["generation"])


def model_status(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    return next((m for m in (edgeagent(cluster).get("status") or {}).get("models", []) if m["name"] == name), None)


def ready_condition(cluster: LocalCluster) -> dict[str, Any]:
    return next(c for c in edgeagent(cluster)["status"]["conditions"] if c["type"] == "Ready")


async def wait_affine(cluster: LocalCluster, what: str, state: str = "Ready", **fields: Any) -> dict[str, Any]:
    """The affine model's status once it is in ``state`` with ``fields``."""
    return await eventually(lambda: (m := model_status(cluster, "affine")) and m["state"] == state
                            and all(m.get(k) == v for k, v in fields.items()) and m, what)  # fmt: skip


async def serve_affine_revision_1(cluster: LocalCluster, store: ArtifactStore, keys: Keys, model_files: dict[str, Path]) -> None:
    """Wait for the agent's registration, assign affine revision 1 and wait until it is Ready."""
    await eventually(lambda: edgeagent(cluster).get("status"), "registration")
    assign(cluster, [store.publish(keys, model_files["affine1"], "affine", 1)])
    await wait_affine(cluster, "revision 1 Ready")


async def infer(agent: Agent, name: str = "affine") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(f"{agent.server.url}/v2/models/{name}/infer", json=BODY) as resp:
        return resp.status, await resp.json()


async def test_registers_heartbeats_and_serves_its_assignment(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, model_files: dict[str, Path], cluster_agent: Agent
) -> None:
    agent = cluster_agent
    obj = await eventually(lambda: (edgeagent(cluster).get("status") or {}).get("heartbeatTime") and edgeagent(cluster), "registration")
    # Only its --label flags: the agent neither reads nor copies its Node's labels (the operator selects on those).
    assert obj["metadata"]["labels"] == {"edgemodel.io/pool": "test"}
    assert obj["spec"]["nodeName"] == NODE
    status = obj["status"]
    caps = status["capabilities"]
    assert caps["providers"] == ["CPUExecutionProvider"]
    assert caps["hardwareClass"] == "cpu"
    assert caps["cpuCount"] >= 1
    assert status["endpoint"] == agent.server.url
    assert status.get("grpc") is None  # started without --grpc-port: REST only
    lease = await eventually(lambda: cluster.get("coordination.k8s.io/v1", "Lease", NODE, "default"), "the Lease")
    assert lease["spec"]["holderIdentity"] == NODE
    first_beat = lease["spec"]["renewTime"]
    await eventually(lambda: cluster.get("coordination.k8s.io/v1", "Lease", NODE, "default")["spec"]["renewTime"]
                     != first_beat, "a second heartbeat (Lease renewal)", timeout=5)  # fmt: skip

    generation = assign(cluster, [store.publish(keys, model_files["affine1"], "affine", 1)])
    ready = await wait_affine(cluster, "Ready")
    assert ready["reason"] == "Loaded"
    assert ready["servingRevision"] == 1
    assert ready["provider"] == "CPUExecutionProvider"
    assert edgeagent(cluster)["status"]["observedGeneration"] == generation
    condition = ready_condition(cluster)
    assert condition["status"] == "True"
    assert condition["reason"] == "AllModelsReady"
    for _ in range(3):
        assert (await infer(agent))[0] == 200
    counted = await eventually(lambda: (m := model_status(cluster, "affine")) and m.get("requestCount") == 3 and m, "request counts in the heartbeat")
    assert counted["p50Ms"] > 0
    assert counted["p95Ms"] >= counted["p50Ms"]
    # heartbeats are bounded: about one per second plus coalesced state changes
    writes = agent.control.status_writes if agent.control else 0
    await asyncio.sleep(1.5)
    assert agent.control is not None
    assert agent.control.status_writes - writes <= 3


async def test_the_grpc_endpoint_is_reported_and_reaches_the_agent_over_tls(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    agent = Agent(agent_settings(cluster, keys, tmp_path / "cache", grpc_port=0, tls_cert=cert, tls_key=key))
    await agent.start()
    try:
        status = await eventually(lambda: (edgeagent(cluster).get("status") or {}).get("heartbeatTime") and edgeagent(cluster)["status"],
                                  "registration")  # fmt: skip
        assert status["endpoint"] == agent.server.url
        assert agent.server.grpc_port is not None
        assert agent.server.grpc_port > 0
        assert status["grpc"] == {"target": f"127.0.0.1:{agent.server.grpc_port}", "port": agent.server.grpc_port, "tls": True}
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(status["grpc"]["target"], credentials) as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       request_serializer=pb.ServerLiveRequest.SerializeToString,
                                       response_deserializer=pb.ServerLiveResponse.FromString)  # fmt: skip
            assert (await live(pb.ServerLiveRequest(), timeout=10)).live is True
    finally:
        await agent.stop()


def test_the_reported_grpc_endpoint_follows_the_advertised_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    assert grpc_endpoint("", "0.0.0.0", 8081, tls=False) == GrpcEndpoint(target="127.0.0.1:8081", port=8081, tls=False)
    assert grpc_endpoint("https://agent-0.example:8443", "0.0.0.0", 8081, tls=True).target == "agent-0.example:8081"
    assert grpc_endpoint("http://[fd00::7]:8080", "::", 9000, tls=False).target == "[fd00::7]:9000"
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    assert grpc_endpoint("", "0.0.0.0", 8081, tls=False).target == "10.1.2.3:8081"
    assert GrpcEndpoint.model_validate(grpc_endpoint("", "0.0.0.0", 8081, tls=True).to_k8s()).tls is True


async def test_a_bad_revision_is_reported_and_the_old_one_keeps_serving_then_unassign(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, tmp_path: Path, model_files: dict[str, Path], cluster_agent: Agent
) -> None:
    await serve_affine_revision_1(cluster, store, keys, model_files)
    unsigned = store.publish(make_keys(tmp_path, "intruder"), model_files["affine2"], "affine", 2)
    assign(cluster, [unsigned])
    failed = await wait_affine(cluster, "Failed", state="Failed")
    assert failed["reason"] == "SignatureInvalid"
    assert failed["revision"] == 2
    assert failed["servingRevision"] == 1
    condition = ready_condition(cluster)
    assert condition["status"] == "False"
    assert "SignatureInvalid" in condition["message"]
    status, payload = await infer(cluster_agent)
    assert status == 200
    assert payload["model_version"] == "1"
    assign(cluster, [])
    await eventually(lambda: edgeagent(cluster)["status"]["models"] == [], "the model leaving status")
    assert (await infer(cluster_agent))[0] == 404


async def test_api_outage_keeps_serving_and_reconciles_when_it_returns(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, model_files: dict[str, Path], cluster_agent: Agent
) -> None:
    agent = cluster_agent
    await serve_affine_revision_1(cluster, store, keys, model_files)
    await asyncio.to_thread(cluster.stop)
    assert agent.control is not None
    await eventually(lambda: agent.control is not None and agent.control.online is False, "the agent noticing the outage")
    for _ in range(5):
        assert (await infer(agent))[0] == 200
    await asyncio.to_thread(cluster.start)
    assign(cluster, [store.publish(keys, model_files["affine2"], "affine", 2)])
    ready = await wait_affine(cluster, "revision 2 after the outage", servingRevision=2)
    assert ready["revision"] == 2
    assert agent.control.online is True
    assert (await infer(agent))[1]["model_version"] == "2"


async def test_restart_without_the_api_serves_the_cache_then_reconciles(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    cache = tmp_path / "cache"
    first = Agent(agent_settings(cluster, keys, cache))
    await first.start()
    try:
        await eventually(lambda: edgeagent(cluster).get("status"), "registration")
        assign(cluster, [store.publish(keys, model_files["affine1"], "affine", 1),
                         store.publish(keys, model_files["gather"], "gather", 1)])  # fmt: skip
        await eventually(lambda: all(m["state"] == "Ready" for m in edgeagent(cluster)["status"]["models"])
                         and len(edgeagent(cluster)["status"]["models"]) == 2, "both Ready")  # fmt: skip
    finally:
        await first.stop()
    await asyncio.to_thread(cluster.stop)
    await store.stop()  # neither the API nor the store: everything must come from the cache

    second = Agent(agent_settings(cluster, keys, cache))
    await second.start()
    try:
        status, payload = 0, {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: the cache restore takes a moment
            status, payload = await infer(second)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        assert payload["model_version"] == "1"
        assert second.control is not None
        await eventually(lambda: second.control is not None and second.control.online is False, "offline")
        await asyncio.to_thread(cluster.start)
        assign(cluster, [store.publish(keys, model_files["affine1"], "affine", 1)])  # gather unassigned while offline
        await eventually(lambda: [m["name"] for m in edgeagent(cluster)["status"]["models"]] == ["affine"], "reconciled status")
        await eventually(lambda: "gather" not in second.server.repository.names(), "gather unloaded")
        assert (await infer(second))[0] == 200
    finally:
        await second.stop()


async def test_a_deleted_edgeagent_is_recreated_and_serving_continues(
    cluster: LocalCluster, store: ArtifactStore, keys: Keys, model_files: dict[str, Path], cluster_agent: Agent
) -> None:
    await serve_affine_revision_1(cluster, store, keys, model_files)
    uid = edgeagent(cluster)["metadata"]["uid"]
    await asyncio.to_thread(cluster.delete, API_VERSION, "EdgeAgent", NODE)
    recreated = await eventually(lambda: (o := cluster.get(API_VERSION, "EdgeAgent", NODE)) and o["metadata"]["uid"] != uid
                                 and (o.get("status") or {}).get("models") and o, "re-creation")  # fmt: skip
    assert recreated["status"]["models"][0]["state"] == "Ready"
    assert (await infer(cluster_agent))[0] == 200  # the saved assignment keeps serving until the operator writes spec
