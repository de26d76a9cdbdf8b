"""The typed sections of the signed artifact manifest: round trip, old manifests, future keys, bad values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edgemodel.api import ArtifactManifest, ManifestEnvironment, ManifestSplit, ManifestValidation
from edgemodel.errors import describe_validation_error

#: A manifest as the converter of the first release wrote it (sections as free dicts, no split, no sizes).
OLD_MANIFEST: dict[str, Any] = {
    "schemaVersion": 1, "model": "resnet", "namespace": "default", "revision": 3, "createdAt": "2026-11-01T10:00:00Z",
    "sourceUri": "file:///m.pt", "sourceFormat": "torch", "opset": 17,
    "validation": {"metric": "top1", "requestedMetric": "top1", "data": "file:///val.npz", "samples": 200,
                   "original": 0.981, "maxAccuracyDrop": 0.01, "selectionBatch": 8},
    "environment": {"onnxruntime": "1.20.0", "onnx": "1.17.0", "numpy": "2.1.0", "python": "3.11.7",
                    "machine": "x86_64", "cpu": "AMD EPYC", "cpuFlags": ["avx2"], "threads": 2,
                    "provider": "cpu: CPUExecutionProvider", "availableProviders": ["CPUExecutionProvider"],
                    "loadAverage": [1.5, 1.2, 0.9], "torch": "2.13.0"},
    "files": {"model-cpu.onnx": "ab" * 32},
}  # fmt: skip

#: The split summary the converter writes with spec.split on.
SPLIT: dict[str, Any] = {
    "cut": "/layer2/Relu_output_0", "shape": ["batch", 64, 8, 8], "chosenBy": "auto", "reason": "chosen by the planner",
    "wire": "int8", "precision": "fp32", "predictedMs": 21.5, "budgetMet": True, "featureBytes": 4200,
    "featureBatch": 1, "maxAbsDiff": 0.0, "verifiedSamples": 16, "candidates": 7,
    "head": "head.onnx", "tail": "tail.onnx", "manifest": "split.json",
}  # fmt: skip


def test_a_typed_manifest_round_trips_through_its_json() -> None:
    manifest = ArtifactManifest.model_validate({**OLD_MANIFEST, "split": SPLIT})
    assert isinstance(manifest.split, ManifestSplit)
    assert (manifest.split.cut, manifest.split.chosen_by, manifest.split.feature_bytes) == (
        SPLIT["cut"],
        "auto",
        4200,
    )
    assert manifest.validation.samples == 200
    assert manifest.validation.max_accuracy_drop == 0.01
    assert manifest.environment.load_average == [1.5, 1.2, 0.9]
    assert manifest.environment.cpu_flags == ["avx2"]
    stored = json.dumps(manifest.to_k8s(), indent=2)
    again = ArtifactManifest.model_validate_json(stored)
    assert again == manifest
    assert again.to_k8s() == manifest.to_k8s()
    assert again.to_k8s()["split"] == SPLIT  # camelCase on the wire, every key the converter writes, no more
    assert again.to_k8s()["validation"] == OLD_MANIFEST["validation"]
    assert again.to_k8s()["environment"] == OLD_MANIFEST["environment"]


def test_the_writer_builds_sections_from_keywords_with_nothing_extra() -> None:
    split = ManifestSplit(cut="x", wire="int8", chosen_by="manual", feature_bytes=10)
    validation = ManifestValidation(metric="agreement", samples=32, original=1.0, max_accuracy_drop=0.02)
    environment = ManifestEnvironment(onnxruntime="1.20.0", threads=2, load_average=[0.5])
    for section in (split, validation, environment):
        assert section.model_extra == {}
    assert split.to_k8s() == {"cut": "x", "wire": "int8", "chosenBy": "manual", "shape": [], "reason": "",
                              "precision": "fp32", "featureBytes": 10, "featureBatch": 1, "head": "head.onnx",
                              "tail": "tail.onnx", "manifest": "split.json"}  # fmt: skip


def test_old_manifests_still_load() -> None:
    old = ArtifactManifest.model_validate_json(json.dumps(OLD_MANIFEST))
    assert old.split is None
    assert old.validation.metric == "top1"
    assert old.environment.torch == "2.13.0"
    # Written by the test helpers before the sections were typed: empty sections and a minimal split.
    helper = ArtifactManifest.model_validate({
        "model": "m", "revision": 1, "validation": {}, "environment": {}, "measurement": {},
        "split": {"cut": "h", "wire": "int8", "chosenBy": "manual", "files": ["head.onnx", "tail.onnx"]},
    })  # fmt: skip
    assert helper.validation == ManifestValidation()
    assert helper.environment == ManifestEnvironment()
    assert helper.split is not None
    assert (helper.split.cut, helper.split.head, helper.split.tail) == ("h", "head.onnx", "tail.onnx")
    bare = ArtifactManifest.model_validate({"model": "m"})  # no sections at all
    assert bare.validation.samples is None
    assert bare.environment.threads is None
    assert bare.split is None


def test_keys_a_newer_converter_adds_load_and_are_kept() -> None:
    newer = {**OLD_MANIFEST, "split": {**SPLIT, "chosenBy": "measured", "cutCost": {"edgeMs": 1.0}},
             "validation": {**OLD_MANIFEST["validation"], "perClass": [0.9, 0.95]},
             "environment": {**OLD_MANIFEST["environment"], "gpu": "none"}}  # fmt: skip
    manifest = ArtifactManifest.model_validate_json(json.dumps(newer))
    assert manifest.split is not None
    assert manifest.split.chosen_by == "measured"
    assert manifest.split.model_extra == {"cutCost": {"edgeMs": 1.0}}
    assert manifest.validation.model_extra == {"perClass": [0.9, 0.95]}
    assert manifest.to_k8s()["environment"]["gpu"] == "none"
    assert ArtifactManifest.model_validate(manifest.to_k8s()) == manifest


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"split": {**SPLIT, "featureBytes": -5}}, "split.featureBytes"),
        ({"split": {**SPLIT, "cut": ""}}, "split.cut"),
        ({"split": {k: v for k, v in SPLIT.items() if k != "wire"}}, "split.wire"),
        ({"split": {**SPLIT, "predictedMs": "fast"}}, "split.predictedMs"),
        ({"split": {**SPLIT, "featureBatch": 0}}, "split.featureBatch"),
        ({"validation": {"samples": "many"}}, "validation.samples"),
        ({"validation": {"maxAccuracyDrop": -0.1}}, "validation.maxAccuracyDrop"),
        ({"environment": {"threads": 0}}, "environment.threads"),
        ({"environment": {"loadAverage": "high"}}, "environment.loadAverage"),
        ({"environment": {"cpuFlags": [1.5]}}, "environment.cpuFlags[0]"),
    ],
)
def test_bad_values_are_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ArtifactManifest.model_validate({**OLD_MANIFEST, **patch})
    message = describe_validation_error(info.value)
    assert message.startswith(f"{field}: "), message
