"""Small builders of EdgeModel specs and EdgeAgent bodies for the operator's unit tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from edgemodel.api import ArtifactRef, EdgeModelSpec, HardwareClass, Precision

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SHA = "a" * 64


def rfc(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def spec(**overrides: Any) -> EdgeModelSpec:
    """A valid digits-like spec; keyword arguments override top-level spec fields (wire form)."""
    wire: dict[str, Any] = {
        "source": {"uri": "file:///models/digits.pt", "format": "TorchScript"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        "selector": {"matchLabels": {"edge": "true"}},
    }
    wire.update(overrides)
    return EdgeModelSpec.model_validate(wire)


def artifacts(revision: int, classes: tuple[str, ...] = ("cpu",)) -> list[ArtifactRef]:
    return [
        ArtifactRef(
            hardware_class=HardwareClass(c),
            uri=f"http://store:8080/default/digits/{revision}/model-{c}.onnx",
            sha256=SHA,
            size_bytes=1000,
            precision=Precision.INT8 if c == "cpu" else Precision.FP16,
            candidate="int8-static" if c == "cpu" else "fp16",
            manifest_uri=f"http://store:8080/default/digits/{revision}/manifest.json",
            signature="c2lnbmF0dXJl",
        )
        for c in classes
    ]


def assignment(revision: int, name: str = "digits", namespace: str = "default") -> dict[str, Any]:
    return {
        "name": name, "namespace": namespace, "revision": revision,
        "artifactUri": f"http://store:8080/{namespace}/{name}/{revision}/model-cpu.onnx", "sha256": SHA,
        "manifestUri": f"http://store:8080/{namespace}/{name}/{revision}/manifest.json", "signature": "c2ln",
    }


def agent_body(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    hardware_class: str = "cpu",
    heartbeat: dt.datetime | None = NOW,
    models: list[dict[str, Any]] | None = None,
    reported: list[dict[str, Any]] | None = None,
    generation: int = 1,
    arch: str = "amd64",
    memory_bytes: int = 8 << 30,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "capabilities": {"arch": arch, "hardwareClass": hardware_class, "memoryBytes": memory_bytes,
                         "providers": ["CPUExecutionProvider"]},
        "endpoint": f"http://127.0.0.1:9000/{name}",
        "models": reported or [],
    }
    if heartbeat is not None:
        status["heartbeatTime"] = rfc(heartbeat)
    return {
        "apiVersion": "edgemodel.io/v1alpha1",
        "kind": "EdgeAgent",
        "metadata": {"name": name, "generation": generation, "labels": {"edge": "true"} if labels is None else labels},
        "spec": {"nodeName": name, "models": models or []},
        "status": status,
    }


def report(revision: int, state: str = "Ready", *, requests: int = 0, errors: int = 0, p95: float | None = None,
           name: str = "digits", namespace: str = "default", reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": namespace, "revision": revision, "state": state,
                           "servingRevision": revision if state == "Ready" else None,
                           "requestCount": requests, "errorCount": errors, "reason": reason, "message": message}
    if p95 is not None:
        out["p95Ms"] = p95
    return out
