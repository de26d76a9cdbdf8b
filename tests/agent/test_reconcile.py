"""Assignments -> download (resume), verify (ed25519 + sha256), cache, load, swap; failures keep the old revision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edge_agent.control.cache import ArtifactCache
from edge_agent.control.reconciler import Reconciler
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edgemodel.api import ModelAssignment, ModelPhase
from edgemodel.signing import load_public_key
from edgemodel_dev.polling import wait_until_async
from tests.agent.artifacts import ArtifactStore, Keys, make_keys
from tests.agent.polling import wait_state

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}


@dataclass
class Node:
    server: AgentServer
    reconciler: Reconciler
    store: ArtifactStore
    keys: Keys
    cache: ArtifactCache
    settings: AgentSettings


def settings_for(tmp: Path) -> AgentSettings:
    return AgentSettings(port=0, cache_dir=tmp / "cache", retry_backoff_s=0.05, download_attempts=3, cache_max_bytes=10**9)


async def make_node(tmp: Path, store: ArtifactStore, keys: Keys, settings: AgentSettings | None = None) -> Node:
    settings = settings or settings_for(tmp)
    server = AgentServer(settings)
    await server.start()
    server.dataplane.started = True
    cache = ArtifactCache(settings.cache_dir, settings.cache_max_bytes)
    reconciler = Reconciler(server, cache, load_public_key(keys.public.read_bytes()), settings)
    return Node(server, reconciler, store, keys, cache, settings)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    store = await ArtifactStore(tmp_path / "store").start()
    n = await make_node(tmp_path, store, make_keys(tmp_path))
    yield n
    await n.reconciler.close()
    await n.server.stop()
    await store.stop()


async def infer(server: AgentServer, name: str = "affine") -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.post(f"{server.url}/v2/models/{name}/infer", json=BODY) as resp:
        return resp.status, await resp.json()


def downloads(store: ArtifactStore, suffix: str) -> list[tuple[str, str, str | None]]:
    return [r for r in store.stats.requests if r[1].endswith(suffix)]


async def test_assignment_is_fetched_verified_loaded_and_served(node: Node, model_files: dict[str, Path]) -> None:
    a = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    seen: list[str] = []
    node.reconciler.on_change = lambda: seen.append(node.reconciler.tracked["affine"].state.value)
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    assert seen[0] == "Pending"
    assert {"Downloading", "Verifying", "Loading"} <= set(seen)
    assert seen[-1] == "Ready"
    status, payload = await infer(node.server)
    assert status == 200
    assert payload["model_version"] == "1"
    assert payload["outputs"][0]["data"] == [3.0] * 4
    state = node.reconciler.states()[0]
    assert (state.state, state.reason, state.serving_revision, state.provider) == (ModelPhase.READY, "Loaded", 1, "CPUExecutionProvider")
    assert state.request_count == 1
    assert state.p50_ms is not None
    assert state.p95_ms is not None
    assert node.cache.has(a.sha256)
    assert node.cache.load_assignment()["models"][0]["sha256"] == a.sha256
    text = node.server.metrics.exposition().decode()
    assert f"edgemodel_artifact_download_bytes_total {float(model_files['affine1'].stat().st_size)}" in text
    # Every per-model series carries the EdgeModel's namespace (team-b's "affine" would be another series).
    assert 'edgemodel_model_state{model="affine",namespace="default",state="Ready",version="1"} 1.0' in text
    assert 'edgemodel_requests_total{code="200",model="affine",namespace="default",provider="CPUExecutionProvider",version="1"} 1.0' in text
    assert 'edgemodel_model_load_duration_seconds_count{model="affine",namespace="default",version="1"} 1.0' in text


async def test_a_broken_download_resumes_with_range(node: Node, model_files: dict[str, Path]) -> None:
    a = node.store.publish(node.keys, model_files["slow"], "slow", 1)
    node.store.cut_next_after = 100_000
    node.store.fail_next = 0
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "slow", ModelPhase.READY)
    gets = downloads(node.store, "model-cpu.onnx")
    assert len(gets) == 2
    assert gets[0][2] is None
    assert gets[1][2] is not None
    assert gets[1][2].startswith("bytes=")
    assert int(gets[1][2][6:-1]) >= 100_000
    assert not node.cache.part(a.sha256).exists()
    assert node.cache.has(a.sha256)


async def test_a_corrupted_artifact_is_rejected_and_the_previous_revision_keeps_serving(node: Node, model_files: dict[str, Path]) -> None:
    first = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    node.reconciler.apply([first])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    second = node.store.publish(node.keys, model_files["affine2"], "affine", 2)
    stored = node.store.root / "default" / "affine" / "2" / "model-cpu.onnx"
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")  # same size, different bytes
    node.reconciler.apply([second])
    await wait_state(node.reconciler, "affine", ModelPhase.FAILED, revision=2)
    state = node.reconciler.states()[0]
    assert state.reason == "DigestMismatch"
    assert state.serving_revision == 1
    assert state.revision == 2
    assert "revision 1 keeps serving" in state.message
    status, payload = await infer(node.server)
    assert status == 200
    assert payload["model_version"] == "1"
    assert not node.cache.has(second.sha256)
    assert not node.cache.part(second.sha256).exists()
    assert 'edgemodel_artifact_download_failures_total{reason="DigestMismatch"} 1.0' in node.server.metrics.exposition().decode()


@pytest.mark.parametrize("attack", ["other-key", "garbage", "manifest-of-another-revision", "sha-not-in-manifest"])
async def test_unsigned_or_mismatched_manifests_are_rejected_before_download(
    node: Node, model_files: dict[str, Path], tmp_path: Path, attack: str
) -> None:
    good = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    node.reconciler.apply([good])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    if attack == "other-key":
        bad = node.store.publish(make_keys(tmp_path, "intruder"), model_files["affine2"], "affine", 2)
        reason = "SignatureInvalid"
    elif attack == "garbage":
        bad = node.store.publish(node.keys, model_files["affine2"], "affine", 2).model_copy(update={"signature": "bm90IGEgc2lnbmF0dXJl"})
        reason = "SignatureInvalid"
    elif attack == "manifest-of-another-revision":
        bad = node.store.publish(node.keys, model_files["affine2"], "affine", 2, manifest_revision=7)
        reason = "ManifestMismatch"
    else:
        bad = node.store.publish(node.keys, model_files["affine2"], "affine", 2)
        bad = bad.model_copy(update={"sha256": "0" * 64})
        reason = "DigestMismatch"
    node.reconciler.apply([bad])
    await wait_state(node.reconciler, "affine", ModelPhase.FAILED, revision=2)
    assert node.reconciler.states()[0].reason == reason
    assert downloads(node.store, "2/model-cpu.onnx") == [], "the model file must not be fetched"
    status, payload = await infer(node.server)
    assert status == 200
    assert payload["model_version"] == "1"
    assert node.reconciler.tracked["affine"].retry_at is None, "a bad signature is not retried"


async def test_a_store_outage_is_retried_until_it_works(node: Node, model_files: dict[str, Path]) -> None:
    a = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    node.store.fail_next = 5  # more than the 3 attempts of one pass
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "affine", ModelPhase.FAILED)
    t = node.reconciler.tracked["affine"]
    assert t.reason == "DownloadFailed"
    assert "503" in t.message
    assert "after 3 attempts" in t.message
    assert t.retry_at is not None
    status, payload = await infer(node.server)
    assert status == 503
    assert "assigned but not ready yet" in payload["error"]
    while node.reconciler.retry_due(now=time.monotonic() + 3600) == 0:  # the resync loop's job
        await asyncio.sleep(0.02)
    await wait_state(node.reconciler, "affine", ModelPhase.READY)


async def test_a_file_onnx_runtime_cannot_load_fails_and_the_old_one_serves(node: Node, model_files: dict[str, Path], tmp_path: Path) -> None:
    node.reconciler.apply([node.store.publish(node.keys, model_files["affine1"], "affine", 1)])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model" * 100)
    node.reconciler.apply([node.store.publish(node.keys, junk, "affine", 2)])
    await wait_state(node.reconciler, "affine", ModelPhase.FAILED, revision=2)
    state = node.reconciler.states()[0]
    assert state.reason == "LoadFailed"
    assert state.serving_revision == 1
    assert (await infer(node.server))[0] == 200


async def test_new_revisions_swap_and_unassigned_models_unload(node: Node, model_files: dict[str, Path]) -> None:
    one = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    other = node.store.publish(node.keys, model_files["gather"], "gather", 1)
    node.reconciler.apply([one, other])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    await wait_state(node.reconciler, "gather", ModelPhase.READY)
    two = node.store.publish(node.keys, model_files["affine2"], "affine", 2)
    node.reconciler.apply([two])
    await wait_state(node.reconciler, "affine", ModelPhase.READY, revision=2)
    await node.server.repository.wait_retired()
    assert node.server.repository.names() == ["affine"]
    assert [v.version for v in node.server.repository.versions("affine")] == ["2"]
    assert [s.name for s in node.reconciler.states()] == ["affine"]
    assert (await infer(node.server, "gather"))[0] == 404
    text = node.server.metrics.exposition().decode()
    assert 'model="gather"' not in text.split("# TYPE edgemodel_model_state")[1]
    # a changed serving setting on the same revision reloads it (hot swap), without a download
    batched = two.model_copy(update={"batching": two.batching.model_copy(update={"enabled": True})})
    before = len(node.store.stats.requests)
    node.reconciler.apply([batched])
    await wait_state(node.reconciler, "affine", ModelPhase.READY, revision=2)
    assert node.server.repository.resolve("affine").batcher is not None
    assert len(node.store.stats.requests) == before, "served from the cache"


def test_cache_evicts_least_recently_used_unpinned_blobs(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=2500)
    for i, sha in enumerate(("a" * 64, "b" * 64, "c" * 64)):
        cache.part(sha).write_bytes(b"x" * 1000)
        cache.commit(sha)
        cache.store_manifest(sha, b"{}")
        import os

        os.utime(cache.blob(sha), (1000 + i, 1000 + i))
    assert cache.evict(keep={"a" * 64}) == ["b" * 64]
    assert cache.has("a" * 64)
    assert not cache.has("b" * 64)
    assert cache.has("c" * 64)
    assert cache.total_bytes() == 2000


async def test_offline_restart_serves_the_cached_assignment(tmp_path: Path, model_files: dict[str, Path]) -> None:
    from edge_agent.control.plane import ControlPlane
    from edgemodel.api import Capabilities
    from edgemodel.kube import Credentials, KubeClient

    store = await ArtifactStore(tmp_path / "store").start()
    keys = make_keys(tmp_path)
    first = await make_node(tmp_path, store, keys)
    a = store.publish(keys, model_files["affine1"], "affine", 1)
    first.reconciler.apply([a], generation=4)
    await wait_state(first.reconciler, "affine", ModelPhase.READY)
    await first.reconciler.close()
    await first.server.stop()
    await store.stop()  # the store is gone too; so is the API server (nothing listens there)

    second = await make_node(tmp_path, store, keys)
    dead_api = KubeClient(Credentials(server="http://127.0.0.1:9"), request_timeout_s=1)
    plane = ControlPlane("edge-1", dead_api, second.reconciler, Capabilities(), second.server.url, {}, retry_backoff_s=0.05)
    assert plane.restore() == 1
    assert plane.observed_generation == 4
    plane.start()
    try:
        await wait_state(second.reconciler, "affine", ModelPhase.READY)
        status, payload = await infer(second.server)
        assert status == 200
        assert payload["model_version"] == "1"
        await wait_until_async("the agent noticing the API is gone", lambda: plane.online is False, 10, interval=0.02)
    finally:
        await plane.stop()
        await second.server.stop()


async def test_a_tampered_cache_is_not_trusted(node: Node, model_files: dict[str, Path]) -> None:
    a = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    node.cache.blob(a.sha256).write_bytes(model_files["affine2"].read_bytes())  # swapped on disk
    node.reconciler.apply([])
    await node.server.repository.wait_retired()
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)
    assert len(downloads(node.store, "model-cpu.onnx")) == 2, "fetched again after the cache failed its sha256"
    status, payload = await infer(node.server)
    assert payload["outputs"][0]["data"] == [3.0] * 4  # type: ignore[index]  # scale 2 (revision 1), not 3




async def test_with_the_real_artifact_store(tmp_path: Path, model_files: dict[str, Path]) -> None:
    """The project's store (edgemodel.store.server) as the converter publishes to it; resume included."""
    import json

    from aiohttp import web

    from edgemodel.api import ArtifactManifest
    from edgemodel.signing import load_private_key, sha256_file, sign
    from edgemodel.store import HttpStore, RevisionRef
    from edgemodel.store.server import create_app

    runner = web.AppRunner(create_app(tmp_path / "store-root", token="upload-token"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    keys = make_keys(tmp_path)
    revision = tmp_path / "rev"
    revision.mkdir()
    (revision / "model-cpu.onnx").write_bytes(model_files["slow"].read_bytes())
    sha = sha256_file(revision / "model-cpu.onnx")
    manifest = (json.dumps(ArtifactManifest(model="slow", revision=3, files={"model-cpu.onnx": sha}).to_k8s(), indent=2) + "\n").encode()
    (revision / "manifest.json").write_bytes(manifest)
    signature = sign(manifest, load_private_key(keys.private))
    files = {name: revision / name for name in ("model-cpu.onnx", "manifest.json")}
    await asyncio.to_thread(HttpStore(url, token="upload-token").put_revision, RevisionRef("default", "slow", 3), files)
    settings = settings_for(tmp_path)
    server = AgentServer(settings)
    cache = ArtifactCache(settings.cache_dir, settings.cache_max_bytes)
    reconciler = Reconciler(server, cache, load_public_key(keys.public.read_bytes()), settings)
    half = model_files["slow"].stat().st_size // 2
    cache.part(sha).write_bytes(model_files["slow"].read_bytes()[:half])  # an earlier attempt broke off here
    try:
        reconciler.apply([ModelAssignment.model_validate({
            "name": "slow", "namespace": "default", "revision": 3, "sha256": sha, "signature": signature,
            "artifactUri": f"{url}/default/slow/3/model-cpu.onnx", "manifestUri": f"{url}/default/slow/3/manifest.json",
        })])  # fmt: skip
        await wait_state(reconciler, "slow", ModelPhase.READY)
        downloaded = float(model_files["slow"].stat().st_size - half)
        assert f"edgemodel_artifact_download_bytes_total {downloaded}" in server.metrics.exposition().decode(), "only the rest"
    finally:
        await reconciler.close()
        await server.stop()
        await runner.cleanup()
