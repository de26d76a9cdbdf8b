"""Split inference through the agents: a head on an edge agent, tails on a cloud agent, over mTLS.

Both agents run the real reconciler (signed manifest -> download -> verify -> load), the real
tail server and the real v2 endpoint; the certificates are a throwaway CA (``edgemodel.split.devpki``).
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent.app import Agent
from edge_agent.control.cache import ArtifactCache
from edge_agent.control.reconciler import Reconciler, TrackKey
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edge_agent.split import SplitModelVersion
from edgemodel.api import API_VERSION, ModelAssignment, ModelPhase, ModelRole
from edgemodel.signing import load_public_key
from edgemodel.split.codec import WireFormat
from edgemodel.split.devpki import Pki, make_pki
from edgemodel.split.graph import split_model
from edgemodel.split.remote import RemoteTail, TailRejected, TlsFiles
from edgemodel_dev.cluster import LocalCluster
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import wait_until_async
from tests.agent.artifacts import ArtifactStore, Keys, SplitRevision, make_keys, publish_split
from tests.agent.polling import eventually, samples, wait_state
from tests.conftest import require_tool
from tests.split.models import residual_model

NAME = "resnet"
CUT = "stem_relu"
INPUTS = [{"name": "x", "dtype": "float32", "shape": [-1, 3, 8, 8]}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": [-1, 5]}]
#: Largest |split - whole| / max|whole| accepted per wire format
#: (measured on this model: fp32 7e-8, fp16 4.5e-5, int8 1.7e-3).
TOLERANCE = {"fp32": 1e-6, "fp16": 5e-4, "int8": 1e-2, "int8+zstd": 1e-2}


@dataclass(frozen=True)
class Revision:
    """A whole model, its head and tail files, and what it answers."""

    files: dict[str, Path]
    whole: Path

    def expected(self, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(self.whole), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"x": x})[0])

    def features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(str(self.files["head.onnx"]), providers=["CPUExecutionProvider"])
        return {CUT: np.asarray(session.run(None, {"x": x})[0])}


def build_revision(directory: Path, seed: int) -> Revision:
    directory.mkdir(parents=True, exist_ok=True)
    model = residual_model(seed)
    whole = directory / "model.onnx"
    onnx.save(model, str(whole))
    head, tail = split_model(model, CUT).save(directory)
    return Revision({"head.onnx": head, "tail.onnx": tail, "model-cpu.onnx": whole}, whole)


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Revision]:
    """Two revisions of one model (different weights), cut at the same tensor."""
    d = tmp_path_factory.mktemp("split-models")
    return {1: build_revision(d / "r1", 0), 2: build_revision(d / "r2", 1)}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Node:
    server: AgentServer
    reconciler: Reconciler

    async def close(self) -> None:
        await self.reconciler.close()
        await self.server.stop()


async def make_node(tmp: Path, keys: Keys, **settings: Any) -> Node:
    s = AgentSettings(port=0, cache_dir=tmp / "cache", retry_backoff_s=0.05, download_attempts=2, cache_max_bytes=10**9,
                      warmup_runs=1, intra_op_threads=1, **settings)  # fmt: skip
    server = AgentServer(s)
    await server.start()
    server.dataplane.started = True
    cache = ArtifactCache(s.cache_dir, s.cache_max_bytes)
    return Node(server, Reconciler(server, cache, load_public_key(keys.public.read_bytes()), s))


def cloud_tls(pki: Pki) -> dict[str, Path]:
    return {"split_tls_ca": pki.ca, "split_tls_cert": pki.server_cert, "split_tls_key": pki.server_key}


def edge_tls(pki: Pki) -> dict[str, Path]:
    return {"split_tls_ca": pki.ca, "split_tls_cert": pki.client_cert, "split_tls_key": pki.client_key}


@dataclass
class Pair:
    store: ArtifactStore
    keys: Keys
    cloud: Node
    edge: Node
    published: dict[int, SplitRevision]


@pytest.fixture
async def pair(tmp_path: Path, pki: Pki, revisions: dict[int, Revision]) -> AsyncIterator[Pair]:
    """A store with both revisions published, a cloud agent (tail server, mTLS) and an edge agent (mTLS client)."""
    store = await ArtifactStore(tmp_path / "store").start()
    keys = make_keys(tmp_path)
    published = {r: publish_split(store, keys, NAME, r, rev.files, CUT, INPUTS, OUTPUTS) for r, rev in revisions.items()}
    cloud = await make_node(tmp_path / "cloud", keys, split_port=0, **cloud_tls(pki))
    edge = await make_node(tmp_path / "edge", keys, **edge_tls(pki))
    yield Pair(store, keys, cloud, edge, published)
    await edge.close()
    await cloud.close()
    await store.stop()


def tail_key(revision: int) -> TrackKey:
    return ("default", NAME, revision)


async def infer(server: AgentServer, x: np.ndarray) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    async with aiohttp.ClientSession() as s, s.post(f"{server.url}/v2/models/{NAME}/infer", json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def logits(payload: dict[str, Any]) -> np.ndarray:
    out = payload["outputs"][0]
    assert out["name"] == "logits"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])



def split_sample(text: str, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"namespace": "default", "model": NAME, "version": "1", **labels}.items())))
    return samples(text).get(key, 0.0)


def promtool_clean(text: str) -> None:
    result = subprocess.run([str(require_tool("promtool")), "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "", "promtool reported problems"


async def serve_split(p: Pair, wire: str = "int8", fallback: str = "local", with_full: bool = True) -> ModelAssignment:
    """Tail of revision 1 on the cloud, then its head on the edge; both Ready."""
    p.cloud.reconciler.apply([p.published[1].tail(wire)])
    await wait_state(p.cloud.reconciler, tail_key(1), ModelPhase.READY)
    head = p.published[1].head(p.cloud.server.split_url, wire, fallback, with_full)
    p.edge.reconciler.apply([head])
    await wait_state(p.edge.reconciler, NAME, ModelPhase.READY)
    return head


def x_batch(seed: int = 3, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("wire", ["fp32", "fp16", "int8", "int8+zstd"])
async def test_the_edge_answers_like_the_whole_model_through_the_cloud_tail(
    pair: Pair, revisions: dict[int, Revision], wire: str
) -> None:
    await serve_split(pair, wire)
    x = x_batch()
    expected = revisions[1].expected(x)
    for _ in range(3):
        status, payload, _ = await infer(pair.edge.server, x)
        assert status == 200, payload
        got = logits(payload)
        assert got.shape == expected.shape == (4, 5)
        assert np.abs(got - expected).max() <= TOLERANCE[wire] * np.abs(expected).max()
    assert payload["model_name"] == NAME
    assert payload["model_version"] == "1"

    # The client sees one ordinary v2 model: the whole model's inputs and outputs.
    async with aiohttp.ClientSession() as s, s.get(f"{pair.edge.server.url}/v2/models/{NAME}") as resp:
        meta = await resp.json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}]

    text = pair.edge.server.metrics.exposition().decode()
    for stage in ("head", "encode", "transfer", "tail"):
        assert split_sample(text, "edgemodel_split_stage_duration_seconds_count", stage=stage) == 3, stage
    assert split_sample(text, "edgemodel_split_requests_total", path="split") == 3
    up = split_sample(text, "edgemodel_split_transfer_bytes_total", direction="up")
    assert up > 0
    assert split_sample(text, "edgemodel_split_transfer_bytes_total", direction="down") > 0
    fp32_features = 4 * 4 * 8 * 8 * 4  # batch 4, 4 channels of 8x8, float32
    if wire == "int8":
        assert up / 3 < fp32_features / 3.5  # INT8 features are ~4x smaller than FP32 on the wire
    cloud = pair.cloud.server.metrics.exposition().decode()
    assert split_sample(cloud, "edgemodel_split_tail_requests_total", result="ok") == 3
    assert split_sample(cloud, "edgemodel_split_tail_requests_total", result="error") == 0
    assert split_sample(cloud, "edgemodel_split_tail_duration_seconds_count") == 3
    cpu = (("model", NAME), ("namespace", "default"), ("provider", "CPUExecutionProvider"), ("version", "1"))
    assert samples(text)[("edgemodel_requests_total", tuple(sorted((*cpu, ("code", "200")))))] == 3
    assert samples(text)[("edgemodel_request_duration_seconds_count", cpu)] == 3

    # Status: the head with its counts and measured RTT, the tail on the cloud side per revision.
    await wait_until_async("the head's cloud RTT", lambda: pair.edge.reconciler.states()[0].cloud_rtt_ms is not None, 20)
    (head,) = pair.edge.reconciler.states()
    assert (head.role, head.state, head.serving_revision, head.request_count, head.error_count) == (
        ModelRole.HEAD, ModelPhase.READY, 1, 3, 0)
    assert head.p95_ms is not None
    assert head.cloud_rtt_ms is not None
    assert 0 < head.cloud_rtt_ms < 5000
    assert head.fallback_count == 0
    assert head.head_ms is not None, "the head's own compute is reported for the operator's cut check"
    assert 0 < head.head_ms <= head.p95_ms, "the head is a part of each request"
    (tail,) = pair.cloud.reconciler.states()
    assert (tail.role, tail.state, tail.revision, tail.serving_revision, tail.request_count) == (
        ModelRole.TAIL, ModelPhase.READY, 1, 1, 3)
    assert NAME not in pair.cloud.server.repository.names(), "tails are not served on the v2 endpoint"


async def test_the_cloud_gone_the_edge_answers_with_the_whole_model(pair: Pair, revisions: dict[int, Revision]) -> None:
    await serve_split(pair, "int8", fallback="local", with_full=True)
    x = x_batch(seed=5)
    expected = revisions[1].expected(x)
    assert (await infer(pair.edge.server, x))[0] == 200  # through the cloud first
    await pair.cloud.close()
    for _ in range(2):  # the second one during the client's cool-down
        status, payload, _ = await infer(pair.edge.server, x)
        assert status == 200, payload
        np.testing.assert_allclose(logits(payload), expected, rtol=1e-5, atol=1e-5)
    text = pair.edge.server.metrics.exposition().decode()
    assert split_sample(text, "edgemodel_split_requests_total", path="split") == 1
    assert split_sample(text, "edgemodel_split_requests_total", path="local") == 2
    assert split_sample(text, "edgemodel_split_stage_duration_seconds_count", stage="local") == 2
    (head,) = pair.edge.reconciler.states()
    assert head.fallback_count == 2
    assert head.request_count == 3
    assert head.error_count == 0
    assert head.state == ModelPhase.READY
    await pair.edge.reconciler.measure_rtts()
    assert pair.edge.reconciler.states()[0].cloud_rtt_ms is None, "a failed ping blanks the RTT, nothing else"
    assert pair.edge.reconciler.states()[0].state == ModelPhase.READY
    promtool_clean(text)


async def test_without_a_local_answer_the_edge_says_503_why(
    tmp_path: Path, pki: Pki, revisions: dict[int, Revision]
) -> None:
    """Policy fail, and policy local without a whole model, with no cloud listening at all."""
    store = await ArtifactStore(tmp_path / "store").start()
    keys = make_keys(tmp_path)
    edge = await make_node(tmp_path / "edge", keys, **edge_tls(pki))
    try:
        nowhere = f"https://127.0.0.1:{free_port()}"
        fail = publish_split(store, keys, "strict", 1, revisions[1].files, CUT, INPUTS, OUTPUTS).head(nowhere, fallback="fail")
        bare = publish_split(store, keys, "bare", 1, revisions[1].files, CUT, INPUTS, OUTPUTS).head(nowhere, with_full=False)
        edge.reconciler.apply([fail, bare])
        await wait_state(edge.reconciler, "strict", ModelPhase.READY)
        await wait_state(edge.reconciler, "bare", ModelPhase.READY)  # an unreachable cloud does not fail the model
        # Both models' head.onnx are the same bytes: fetched once, vouched for by each model's own signed manifest.
        assert len([r for r in store.stats.requests if r[1].endswith("/head.onnx")]) == 1
        assert len(edge.reconciler.cache.manifests_for(fail.sha256)) == 2
        body = {"inputs": [{"name": "x", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.5] * 192}]}
        answers = {}
        async with aiohttp.ClientSession() as s:
            for name in ("strict", "bare"):
                async with s.post(f"{edge.server.url}/v2/models/{name}/infer", json=body) as resp:
                    answers[name] = (resp.status, (await resp.json())["error"], resp.headers.get("Retry-After"))
        assert answers["strict"][0] == answers["bare"][0] == 503
        assert answers["strict"][2] == "1"
        assert "split inference unavailable (policy is fail)" in answers["strict"][1]
        assert "cloud tail https://127.0.0.1:" in answers["strict"][1]
        assert "no full model is assigned to this node" in answers["bare"][1]
        states = {m.name: m for m in edge.reconciler.states()}
        assert states["strict"].error_count == 1
        assert states["strict"].cloud_rtt_ms is None
        assert states["strict"].fallback_count == 0
        text = edge.server.metrics.exposition().decode()
        assert samples(text)[("edgemodel_split_requests_total",
                              (("model", "strict"), ("namespace", "default"), ("path", "unavailable"), ("version", "1")))] == 1  # fmt: skip
        promtool_clean(text)
    finally:
        await edge.close()
        await store.stop()


async def test_the_tail_server_admits_only_clients_with_a_cert_from_its_ca(pair: Pair, pki: Pki) -> None:
    pair.cloud.reconciler.apply([pair.published[1].tail()])
    await wait_state(pair.cloud.reconciler, tail_key(1), ModelPhase.READY)
    url = pair.cloud.server.split_url
    assert url.startswith("https://127.0.0.1:")
    health = f"{url}/v1/split/healthz"

    good = ssl.create_default_context(cafile=str(pki.ca))
    good.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=good)) as s, s.get(health) as resp:
        assert resp.status == 200
        assert (await resp.json())["tails"] == [{"model": NAME, "version": "1", "cuts": [CUT]}]

    no_cert = ssl.create_default_context(cafile=str(pki.ca))
    rogue = ssl.create_default_context(cafile=str(pki.ca))
    rogue.load_cert_chain(str(pki.rogue_client_cert), str(pki.rogue_client_key))
    for context in (no_cert, rogue):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(health) as resp:
                    await resp.read()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(health.replace("https://", "http://")) as resp:
                await resp.read()
    # The head's own client without a certificate cannot use the tail either.
    async with RemoteTail(url, NAME, "1", CUT, tls=TlsFiles(ca_file=pki.ca), cooldown_s=0) as anonymous:
        with pytest.raises(Exception, match="unreachable"):
            await anonymous.infer({CUT: np.zeros((1, 4, 8, 8), np.float32)})


async def test_two_tail_revisions_serve_at_once_and_one_can_be_removed(
    pair: Pair, pki: Pki, revisions: dict[int, Revision]
) -> None:
    p = pair
    p.cloud.reconciler.apply([p.published[1].tail(), p.published[2].tail()])
    await wait_state(p.cloud.reconciler, tail_key(1), ModelPhase.READY)
    await wait_state(p.cloud.reconciler, tail_key(2), ModelPhase.READY)
    assert [(s.role, s.revision, s.state) for s in p.cloud.reconciler.states()] == [
        (ModelRole.TAIL, 1, ModelPhase.READY), (ModelRole.TAIL, 2, ModelPhase.READY)]
    x = x_batch(seed=7, n=2)
    tls = TlsFiles(pki.ca, pki.client_cert, pki.client_key)
    url = p.cloud.server.split_url
    fp32 = WireFormat.parse("fp32")
    async with RemoteTail(url, NAME, "1", CUT, fp32, tls) as r1, RemoteTail(url, NAME, "2", CUT, fp32, tls) as r2:
        for revision, remote in ((1, r1), (2, r2)):
            result = await remote.infer(revisions[revision].features(x))
            np.testing.assert_allclose(result.outputs["logits"], revisions[revision].expected(x), rtol=1e-5, atol=1e-5)
        assert not np.allclose(revisions[1].expected(x), revisions[2].expected(x)), "the revisions differ"

        # The edge moves to revision 2 (hot swap) while the cloud still holds both tails.
        p.edge.reconciler.apply([p.published[1].head(url)])
        await wait_state(p.edge.reconciler, NAME, ModelPhase.READY)
        old = p.edge.server.repository.default(NAME)
        assert isinstance(old, SplitModelVersion)
        p.edge.reconciler.apply([p.published[2].head(url)])
        await wait_until_async("revision 2 serving on the edge",
                               lambda: (mv := p.edge.server.repository.default(NAME)) is not None and mv.version == "2", 20)
        status, payload, _ = await infer(p.edge.server, x)
        assert status == 200
        assert payload["model_version"] == "2"
        assert np.abs(logits(payload) - revisions[2].expected(x)).max() <= TOLERANCE["int8"] * np.abs(revisions[2].expected(x)).max()
        await p.edge.server.repository.wait_retired()
        assert old.closed
        assert old.full is not None
        assert old.full.session is None

        # Revision 1 leaves the cloud: its tail is gone, revision 2's keeps answering.
        p.cloud.reconciler.apply([p.published[2].tail()])
        await wait_until_async("revision 1 leaving status", lambda: len(p.cloud.reconciler.states()) == 1, 20)
        with pytest.raises(TailRejected) as gone:
            await r1.infer(revisions[1].features(x))
        assert gone.value.status == 404
        result = await r2.infer(revisions[2].features(x))
        np.testing.assert_allclose(result.outputs["logits"], revisions[2].expected(x), rtol=1e-5, atol=1e-5)
        assert (await r2.health())["tails"] == [{"model": NAME, "version": "2", "cuts": [CUT]}]
    (state,) = p.cloud.reconciler.states()
    assert (state.revision, state.role, state.state) == (2, ModelRole.TAIL, ModelPhase.READY)
    assert "edgemodel_model_state{model=\"resnet\",namespace=\"default\",state=\"Ready\",version=\"1\"}" not in p.cloud.server.metrics.exposition().decode()


async def test_a_tail_on_an_agent_without_split_port_fails_and_says_how_to_fix_it(pair: Pair) -> None:
    pair.edge.reconciler.apply([pair.published[1].tail()])
    await wait_state(pair.edge.reconciler, tail_key(1), ModelPhase.FAILED)
    (state,) = pair.edge.reconciler.states()
    assert (state.role, state.revision, state.reason) == (ModelRole.TAIL, 1, "SplitServerDisabled")
    assert "--split-port" in state.message
    assert pair.store.stats.requests == [], "nothing is downloaded for a tail this agent cannot serve"


async def test_one_name_and_revision_from_two_namespaces_is_a_tail_conflict(pair: Pair, revisions: dict[int, Revision]) -> None:
    other = publish_split(pair.store, pair.keys, NAME, 1, revisions[2].files, CUT, INPUTS, OUTPUTS, namespace="other")
    pair.cloud.reconciler.apply([pair.published[1].tail()])
    await wait_state(pair.cloud.reconciler, tail_key(1), ModelPhase.READY)
    pair.cloud.reconciler.apply([pair.published[1].tail(), other.tail()])
    await wait_state(pair.cloud.reconciler, ("other", NAME, 1), ModelPhase.FAILED)
    failed = next(s for s in pair.cloud.reconciler.states() if s.namespace == "other")
    assert failed.reason == "TailConflict"
    assert "from namespace default" in failed.message
    assert pair.cloud.server.tails.describe() == [{"model": NAME, "version": "1", "cuts": [CUT]}]
    assert pair.cloud.reconciler.tails[("default", NAME, 1)].sha256 == pair.published[1].sha["tail.onnx"]


def test_split_tls_files_go_together_and_must_load(tmp_path: Path, pki: Pki) -> None:
    from edgemodel.errors import UserError

    with pytest.raises(ValueError, match="give all three"):
        AgentSettings(split_tls_ca=pki.ca, split_tls_cert=pki.server_cert)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    with pytest.raises(UserError, match="--split-tls-cert"):
        AgentServer(AgentSettings(port=0, split_port=0, split_tls_ca=pki.ca, split_tls_cert=broken, split_tls_key=pki.server_key))


# -- the real Agent on the emulated cluster ------------------------------------------------------------------------------


def agent_model_status(cluster: LocalCluster, node: str) -> list[dict[str, Any]]:
    return list(((cluster.get(API_VERSION, "EdgeAgent", node) or {}).get("status") or {}).get("models") or [])


def assign(cluster: LocalCluster, node: str, models: list[ModelAssignment]) -> None:
    obj = cluster.get(API_VERSION, "EdgeAgent", node) or {}
    obj["spec"]["models"] = [m.to_k8s() for m in models]
    obj.pop("status", None)
    cluster.apply(obj)



async def test_agents_report_split_roles_endpoint_rtt_and_fallbacks_in_their_edgeagents(
    kube_cluster_auth: LocalCluster, tmp_path: Path, pki: Pki, revisions: dict[int, Revision]
) -> None:
    cluster = kube_cluster_auth
    cluster.apply_crds()
    (cloud_node,) = cluster.add_nodes(1, prefix="cloud-", labels={"edgemodel.io/tier": "cloud"})
    (edge_node,) = cluster.add_nodes(1)
    store = await ArtifactStore(tmp_path / "store").start()
    keys = make_keys(tmp_path)
    revision = publish_split(store, keys, NAME, 1, revisions[1].files, CUT, INPUTS, OUTPUTS)

    def settings(node: str, **extra: Any) -> AgentSettings:
        return AgentSettings(port=0, node_name=node, kubeconfig=cluster.agent_kubeconfig(node), public_key=keys.public,
                             cache_dir=tmp_path / node, heartbeat_interval_s=1.0, status_min_interval_s=0.1, stats_interval_s=1.0,
                             retry_backoff_s=0.05, download_attempts=2, warmup_runs=1, intra_op_threads=1, **extra)  # fmt: skip

    cloud = Agent(settings(cloud_node, split_port=0, **cloud_tls(pki)))
    edge = Agent(settings(edge_node, **edge_tls(pki)))
    await cloud.start()
    await edge.start()
    cloud_running = True
    try:
        status = await eventually(lambda: (cluster.get(API_VERSION, "EdgeAgent", cloud_node) or {}).get("status"), "cloud registration")
        split_endpoint = status["splitEndpoint"]
        assert split_endpoint == f"https://127.0.0.1:{cloud.server.split_port}"
        assert (await eventually(lambda: (cluster.get(API_VERSION, "EdgeAgent", edge_node) or {}).get("status"),
                                 "edge registration"))["splitEndpoint"] == ""  # fmt: skip

        assign(cluster, cloud_node, [revision.tail()])
        (tail,) = await eventually(lambda: [m for m in agent_model_status(cluster, cloud_node) if m["state"] == "Ready"], "tail Ready")
        assert (tail["role"], tail["revision"], tail["name"]) == ("tail", 1, NAME)

        assign(cluster, edge_node, [revision.head(split_endpoint)])
        head = await eventually(lambda: next((m for m in agent_model_status(cluster, edge_node)
                                              if m["state"] == "Ready" and m.get("cloudRttMs") is not None), None),
                                "head Ready with an RTT")  # fmt: skip
        assert head["role"] == "head"
        assert head["servingRevision"] == 1
        x = x_batch(seed=11, n=1)
        status_code, payload, _ = await infer(edge.server, x)
        assert status_code == 200
        assert np.abs(logits(payload) - revisions[1].expected(x)).max() <= TOLERANCE["int8"] * np.abs(revisions[1].expected(x)).max()
        await eventually(lambda: [m["requestCount"] for m in agent_model_status(cluster, cloud_node)] == [1], "the tail's count")

        await cloud.stop()
        cloud_running = False
        assert (await infer(edge.server, x))[0] == 200
        head = await eventually(lambda: next((m for m in agent_model_status(cluster, edge_node) if m.get("fallbackCount") == 1),
                                             None), "fallbackCount in the edge's status")  # fmt: skip
        assert (head["requestCount"], head["errorCount"], head["state"]) == (2, 0, "Ready")
    finally:
        await edge.stop()
        if cloud_running:
            await cloud.stop()
        await store.stop()


def test_the_agent_with_split_serving_stays_light() -> None:
    """The agent image has no onnx, torch or kopf: importing the agent (split serving included) pulls none of them."""
    import sys

    code = ("import sys, edge_agent.app, edge_agent.split, edgemodel.cli.agent; "
            "bad = [m for m in ('onnx', 'torch', 'kopf', 'kubernetes', 'sklearn') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
