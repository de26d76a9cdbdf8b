"""The control side against a hostile store and a failing disk (issue 13, items 5 and 6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.control.capabilities import probe
from edge_agent.control.plane import ControlPlane
from edgemodel.api import ModelPhase
from edgemodel.kube import Credentials, KubeClient
from tests.agent.artifacts import ArtifactStore, make_keys
from tests.agent.polling import wait_state
from tests.agent.test_reconcile import Node, infer, make_node, settings_for

FLOOD = 48 << 20


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    store = await ArtifactStore(tmp_path / "store").start()
    settings = settings_for(tmp_path).model_copy(update={"cache_max_bytes": 4 << 20})
    n = await make_node(tmp_path, store, make_keys(tmp_path), settings)
    yield n
    await n.reconciler.close()
    await n.server.stop()
    await store.stop()


def written(node: Node) -> float:
    return node.server.metrics.download_bytes._value.get()  # bytes the agent wrote to disk


@pytest.mark.parametrize("with_sizes", [True, False], ids=["signed-size", "cache-bound"])
async def test_a_flooding_store_is_cut_off_at_the_signed_size(node: Node, model_files: dict[str, Path], with_sizes: bool) -> None:
    a = node.store.publish(node.keys, model_files["affine1"], "affine", 1, with_sizes=with_sizes)
    size = (node.store.root / "default" / "affine" / "1" / "model-cpu.onnx").stat().st_size
    node.store.flood_next = FLOOD  # e.g. a man in the middle of plain HTTP: 48 MB for a file of a few hundred bytes
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "affine", ModelPhase.READY)  # the next attempt gets the real file
    bound = size if with_sizes else node.cache.max_bytes
    assert written(node) <= bound + size, f"wrote {written(node)} bytes for a {size}-byte file (bound {bound})"
    assert node.store.flooded < FLOOD, "the agent read the whole flood instead of hanging up"
    assert not node.cache.part(a.sha256).exists()
    assert (await infer(node.server))[0] == 200


async def test_a_file_larger_than_the_cache_is_refused_before_download(node: Node, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * ((4 << 20) + 1))
    a = node.store.publish(node.keys, big, "big", 1)
    node.reconciler.apply([a])
    await wait_state(node.reconciler, "big", ModelPhase.FAILED)
    state = node.reconciler.states()[0]
    assert state.reason == "DownloadFailed"
    assert "more than the artifact cache holds" in state.message
    assert "--cache-max-bytes" in state.message
    assert written(node) == 0


async def test_a_failed_save_is_retried_and_observed_only_once_applied(node: Node, model_files: dict[str, Path]) -> None:
    capabilities = probe(available=["CPUExecutionProvider"])
    plane = ControlPlane("edge-1", KubeClient(Credentials(server="http://127.0.0.1:1")), node.reconciler, capabilities,
                         endpoint="", labels={}, retry_backoff_s=0.05, resync_interval_s=1.0)  # fmt: skip
    a = node.store.publish(node.keys, model_files["affine1"], "affine", 1)
    blocker = node.cache.root / ".assignment.json.tmp"
    blocker.mkdir()  # the atomic write of assignment.json fails (like a full disk), even for root
    obj = {"metadata": {"name": "edge-1", "generation": 7}, "spec": {"models": [a.to_k8s()]}}
    plane.handle(obj)
    assert plane.observed_generation is None
    assert not node.reconciler.tracked  # nothing half-applied
    applied = next(c for c in plane._conditions if c.type == "Applied")
    assert (str(applied.status.value), applied.reason) == ("False", "SaveFailed")
    assert "cannot save the assignment" in applied.message
    assert "retrying in" in applied.message
    plane.handle(obj)  # the same spec again (a watch event) is not ignored: it was never applied
    assert plane.observed_generation is None
    blocker.rmdir()
    task = asyncio.get_running_loop().create_task(plane._resync_loop())  # no API here: only the retry loop runs
    try:
        await wait_state(node.reconciler, "affine", ModelPhase.READY)
    finally:
        task.cancel()
    assert plane.observed_generation == 7
    assert node.cache.load_assignment() is not None
    applied = next(c for c in plane._conditions if c.type == "Applied")
    assert str(applied.status.value) == "True"
    await plane.client.close()
