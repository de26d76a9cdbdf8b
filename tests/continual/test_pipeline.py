"""The data path end to end with real components (only the Kubernetes API is faked):

a real agent captures uncertain requests and takes feedback, uploads the labelled samples to a real
artifact store, the training Job's entry point fine-tunes with replay from the store and writes its
report there, and the operator reads the report and points spec.source at the retrained model.
The served ONNX model and the TorchScript source are two different small classifiers here: what is
tested is the path of the samples, the checksums and the gate, not the conversion between them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests

from edge_agent.settings import AgentSettings, LocalModel
from edgemodel.continual.train import main as train_main
from edgemodel.signing import verify_bundle
from edgemodel_operator import continual
from tests.agent.conftest import AgentThread
from tests.continual.models import classifier
from tests.continual.test_operator_continual import EM, FakeClient, FakeRuntime
from tests.store.running import TOKEN, running_store

AGENT_TOKEN = "agent-token"
AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def original(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    x = np.eye(4, dtype=np.float32)[y] + rng.normal(0, 0.1, (n, 4)).astype(np.float32)
    return x, y.astype(np.int64)


def drifted(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c now looks like a faint c+1 with a new feature on: the served model is unsure and wrong."""
    y = rng.integers(0, 3, n)
    x = 0.3 * np.eye(4, dtype=np.float32)[(y + 1) % 3] + np.eye(4, dtype=np.float32)[3]
    return (x + rng.normal(0, 0.05, (n, 4))).astype(np.float32), y.astype(np.int64)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    with running_store(tmp_path / "store", TOKEN) as url:
        yield url


def test_capture_feedback_upload_train_gate_and_new_source(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR", str(tmp_path / "captures"))
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_STORE_URL", store)
    monkeypatch.setenv("EDGEMODEL_AGENT_CONTINUAL_MAX_CAPTURES_PER_S", "1000")
    (tmp_path / "agent-token").write_text(AGENT_TOKEN)
    (tmp_path / "store-token").write_text(TOKEN)
    settings = AgentSettings(
        port=0, token_file=tmp_path / "agent-token", store_token_file=tmp_path / "store-token"
    )
    x_new, y_new = drifted(rng, 120)
    with AgentThread(settings, [LocalModel("clf", "1", classifier(tmp_path / "clf.onnx"))]) as agent:
        base = f"http://127.0.0.1:{agent.port}/v2/models/clf"
        for i, row in enumerate(x_new):
            body = {
                "id": f"q{i}",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}],
            }
            assert requests.post(f"{base}/infer", json=body, headers=AUTH, timeout=10).status_code == 200
        assert agent.server is not None
        agent.server.continual.drain()
        labels = [{"id": f"q{i}", "label": int(y)} for i, y in enumerate(y_new)]
        answer = requests.post(f"{base}/feedback", json={"labels": labels}, headers=AUTH, timeout=10).json()
        assert answer["captured"] == 120
        assert answer["feedbackAccuracy"] < 0.2
        manifest = requests.post(f"{base}/capture/upload", headers=AUTH, timeout=30).json()
        assert manifest["samples"] == 120
        assert manifest["uri"].startswith(f"{store}/captures/default/clf/standalone-")
        stem = manifest["uri"][: -len(".npz")]
        signed = requests.get(f"{stem}.json", timeout=10).content
        verify_bundle(signed, requests.get(f"{stem}.json.sig", timeout=10).text, TOKEN)  # HMAC under the store token
        assert json.loads(signed)["node"] == "standalone"
        status = requests.get(f"{base}/continual", headers=AUTH, timeout=10).json()
        assert status["labelledWaiting"] == 0
        assert status["lastUploadUri"] == manifest["uri"]
        again = requests.post(f"{base}/capture/upload", headers=AUTH, timeout=10)
        assert again.status_code == 409  # nothing new to upload

    # the source model: an MLP trained on the original world; replay and validation data from it
    x_train, y_train = original(rng, 600)
    x_val, y_val = original(rng, 300)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(
            mlp(torch.from_numpy(x_train)), torch.from_numpy(y_train)
        ).backward()
        opt.step()
    torch.jit.save(torch.jit.script(mlp.eval()), str(tmp_path / "source.pt"))
    np.savez(tmp_path / "train.npz", input=x_train, labels=y_train)
    np.savez(tmp_path / "val.npz", input=x_val, labels=y_val)
    monkeypatch.setenv("EDGEMODEL_STORE_TOKEN", TOKEN)
    code = train_main([
        "--source-uri", (tmp_path / "source.pt").as_uri(), "--captures-url", f"{store}/captures/default/clf/",
        "--replay-uri", (tmp_path / "train.npz").as_uri(), "--validation-uri", (tmp_path / "val.npz").as_uri(),
        "--store-url", store, "--out-prefix", "continual/default/clf/round-1",
        "--epochs", "60", "--learning-rate", "0.01", "--min-gain", "0.3", "--max-drop", "0.02",
    ])  # fmt: skip
    report = json.loads(requests.get(f"{store}/continual/default/clf/round-1/report.json", timeout=10).text)
    assert code == 0, report["message"]
    assert report["samples"] == 120
    assert report["captures"][0] == manifest["uri"]
    assert report["gate"]["new_after"] - report["gate"]["new_before"] >= 0.3
    assert requests.get(report["modelUri"], timeout=10).status_code == 200

    # the operator: the Job ended, the report passed -> spec.source is the retrained model
    client = FakeClient([])
    runtime = FakeRuntime(client)
    runtime.settings = runtime.settings.model_copy(update={"store_url": store})
    body = copy.deepcopy(EM)
    body["metadata"]["namespace"] = "default"
    body["metadata"]["name"] = "clf"
    body["status"]["continual"] = {
        "activeJob": "clf-continual-1",
        "lastRoundAt": "2026-01-01T00:00:00Z",
        "rounds": [{"round": 1, "trigger": "drift", "startedAt": "2026-01-01T00:00:00Z"}],
    }
    client.jobs["clf-continual-1"] = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            runtime.session = lambda: session  # type: ignore[attr-defined]
            await continual.tick(runtime, body)  # type: ignore[arg-type]

    import asyncio

    asyncio.run(run())
    spec_patch = next(b for p, b in client.patches if not p.endswith("/status"))
    assert spec_patch["spec"]["source"]["uri"] == report["modelUri"]
    rounds: list[dict[str, Any]] = [b for p, b in client.patches if p.endswith("/status")][-1]["status"][
        "continual"
    ]["rounds"]
    assert rounds[0]["outcome"] == "Passed"
    assert rounds[0]["newAccuracyAfter"] == pytest.approx(report["gate"]["new_after"], abs=1e-4)
