"""A 3-stage pipeline served by three real agents (reconciler, tail server, v2 endpoint) over mTLS.

The assignments come from the operator's ``stage_assignments`` (chain.json + the entry's artifact).

The entry is an ordinary ``head`` (stage 1 + the whole model), the middle stage a ``tail`` with
``split.nextUrl`` (edge_agent/pipeline.py), the last stage a plain ``tail``. Clients call the
entry's v2 endpoint; with the last stage's agent gone the entry answers with the whole model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent.control.cache import ArtifactCache
from edge_agent.control.reconciler import Reconciler
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edgemodel.api import ArtifactManifest, ArtifactRef, ModelPhase
from edgemodel.signing import load_private_key, load_public_key, sha256_file, sign
from edgemodel.split.chain import build_chain
from edgemodel.split.devpki import make_pki
from edgemodel_operator.pipeline import stage_assignments
from tests.agent.artifacts import ArtifactStore, Keys, make_keys
from tests.agent.polling import samples, wait_state
from tests.split.models import residual_model

NAME = "resnet"
CUTS = ["stem_relu", "block_relu"]
INPUTS = [{"name": "x", "dtype": "float32", "shape": [-1, 3, 8, 8]}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": [-1, 5]}]


def publish(store: ArtifactStore, keys: Keys, files: dict[str, Path]) -> tuple[str, str, dict[str, str]]:
    """A signed pipeline revision (stages + whole model, no single-cut split in the manifest): base URL, sig, sha."""
    folder = store.root / "default" / NAME / "1"
    folder.mkdir(parents=True, exist_ok=True)
    sha = {}
    for file, source in files.items():
        (folder / file).write_bytes(source.read_bytes())
        sha[file] = sha256_file(folder / file)
    manifest = ArtifactManifest.model_validate(
        {
            "model": NAME,
            "namespace": "default",
            "revision": 1,
            "files": sha,
            "inputs": INPUTS,
            "outputs": OUTPUTS,
        }
    )
    data = (json.dumps(manifest.to_k8s(), indent=2) + "\n").encode()
    signature = sign(data, load_private_key(keys.private))
    (folder / "manifest.json").write_bytes(data)
    return f"{store.url}/default/{NAME}/1", signature, sha


@dataclass
class Node:
    server: AgentServer
    reconciler: Reconciler
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.reconciler.close()
            await self.server.stop()


async def make_node(tmp: Path, keys: Keys, **settings: Any) -> Node:
    s = AgentSettings(port=0, cache_dir=tmp / "cache", retry_backoff_s=0.05, download_attempts=2, cache_max_bytes=10**9,
                      warmup_runs=1, intra_op_threads=1, **settings)  # fmt: skip
    server = AgentServer(s)
    await server.start()
    server.dataplane.started = True
    return Node(server, Reconciler(server, ArtifactCache(s.cache_dir, s.cache_max_bytes),
                                   load_public_key(keys.public.read_bytes()), s))  # fmt: skip


@dataclass
class Chain:
    nodes: list[Node]
    whole: Path


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    model = residual_model(0)
    whole = tmp_path / "model.onnx"
    onnx.save(model, str(whole))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    built = build_chain(model, [{"x": x}], tmp_path / "stages", CUTS, wire="fp32")
    store = await ArtifactStore(tmp_path / "store").start()
    keys = make_keys(tmp_path)
    files = {p.name: p for p in built.paths} | {"model-cpu.onnx": whole}
    base, signature, sha = publish(store, keys, files)
    pki = make_pki(tmp_path / "pki")
    assert pki.peer_cert is not None
    assert pki.peer_key is not None
    peer = {"split_tls_ca": pki.ca, "split_tls_cert": pki.peer_cert, "split_tls_key": pki.peer_key}
    last = await make_node(tmp_path / "n3", keys, split_port=0, **peer)
    middle = await make_node(tmp_path / "n2", keys, split_port=0, **peer)
    first = await make_node(
        tmp_path / "n1",
        keys,
        split_tls_ca=pki.ca,
        split_tls_cert=pki.client_cert,
        split_tls_key=pki.client_key,
    )
    artifact = ArtifactRef.model_validate({
        "hardwareClass": "cpu", "uri": f"{base}/model-cpu.onnx", "sha256": sha["model-cpu.onnx"], "sizeBytes": 1,
        "precision": "fp32", "manifestUri": f"{base}/manifest.json", "signature": signature})  # fmt: skip
    entries = stage_assignments(
        built.manifest,
        artifact,
        "default",
        NAME,
        1,
        ["n1", "n2", "n3"],
        {"n2": middle.server.split_url, "n3": last.server.split_url},
    )
    assert entries["n2"].split is not None
    assert (entries["n2"].split.next_url, entries["n2"].split.next_cut) == (last.server.split_url, CUTS[1])
    # a chain rolls out from its end: the last stage, then the middle, then the entry
    last.reconciler.apply([entries["n3"]])
    await wait_state(last.reconciler, ("default", NAME, 1), ModelPhase.READY)
    middle.reconciler.apply([entries["n2"]])
    await wait_state(middle.reconciler, ("default", NAME, 1), ModelPhase.READY)
    first.reconciler.apply([entries["n1"]])
    await wait_state(first.reconciler, NAME, ModelPhase.READY)
    yield Chain([first, middle, last], whole)
    for node in (first, middle, last):
        await node.close()
    await store.stop()


async def infer(server: AgentServer, x: np.ndarray) -> tuple[int, dict[str, Any]]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{server.url}/v2/models/{NAME}/infer", json=body) as resp,
    ):
        return resp.status, await resp.json()


def logits(payload: dict[str, Any]) -> np.ndarray:
    out = payload["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def counted(node: Node, name: str, **labels: str) -> float:
    text = node.server.metrics.exposition().decode()
    return sum(
        v
        for (n, ls), v in samples(text).items()
        if n == name and all((k, x) in ls for k, x in labels.items())
    )


async def test_three_agents_serve_the_chain_and_the_entry_falls_back_when_a_stage_goes(chain: Chain) -> None:
    first, middle, last = chain.nodes
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(chain.whole), providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, {"x": x})[0])
    for _ in range(3):
        status, payload = await infer(first.server, x)
        assert status == 200, payload
        np.testing.assert_allclose(logits(payload), expected, rtol=1e-5, atol=1e-6)
    # every stage ran every request: the middle's and the last's tail counts, the entry's split path
    assert counted(first, "edgemodel_split_requests_total", path="split") == 3
    assert counted(middle, "edgemodel_split_tail_requests_total", result="ok") == 3
    assert counted(last, "edgemodel_split_tail_requests_total", result="ok") == 3
    assert counted(middle, "edgemodel_pipeline_requests_total", stage=CUTS[0], path="chain") == 3
    assert counted(middle, "edgemodel_pipeline_stage_duration_seconds_count", phase="downstream") == 3
    # every stage reports its own compute in status (stageMs; the entry's is headMs): the plan check reads them
    for node in (middle, last):
        (state,) = node.reconciler.states()
        assert state.role.value == "tail"
        assert state.stage_ms is not None
        assert state.stage_ms > 0
        assert state.to_k8s()["stageMs"] == state.stage_ms
    (entry_state,) = first.reconciler.states()
    assert entry_state.head_ms is not None
    assert entry_state.stage_ms is None

    await last.close()  # the last stage's node is gone
    for _ in range(3):
        status, payload = await infer(first.server, x)
        assert status == 200, payload
        np.testing.assert_allclose(logits(payload), expected, rtol=1e-5, atol=1e-5)
    assert counted(first, "edgemodel_split_requests_total", path="local") == 3
    (head,) = first.reconciler.states()
    assert head.fallback_count == 3
    assert head.error_count == 0
    # the middle stage told the entry it could not answer (503): the entry then skips the chain for a while
    assert counted(middle, "edgemodel_pipeline_requests_total", stage=CUTS[0], path="unavailable") >= 1
