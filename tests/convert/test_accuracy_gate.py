"""The accuracy gate on real conversions: within budget accepted, over budget rejected, both in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemodel.api import ArtifactManifest
from edgemodel.cli import main
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc


def _convert(doc: dict[str, object], tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> ArtifactManifest:
    out = tmp_path / "out"
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(out), "--signing-key",
                 str(keys.private), *FAST])
    assert code == 0, capsys.readouterr().err
    return ArtifactManifest.model_validate_json((out / "manifest.json").read_bytes())


def test_tight_budget_keeps_fp32_and_rejects_every_int8(digits: DigitsExample, digits_onnx: Path, keys: Keys,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = 1e-6  # FP32 differs from the original only by float rounding; INT8 cannot stay that close
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.validation.metric": "cosine", "spec.validation.maxAccuracyDrop": budget})
    manifest = _convert(doc, tmp_path, keys, capsys)
    assert manifest.validation.metric == "cosine"
    by_name = {c.name: c for c in manifest.candidates}
    baseline = by_name["fp32-opt"]
    assert baseline.accepted
    assert baseline.metric_drop is not None
    assert baseline.metric_drop <= budget
    int8 = [c for c in manifest.candidates if c.precision.value == "int8"]
    assert len(int8) >= 4
    for c in int8:
        assert not c.accepted, c.name
        assert c.metric_drop is not None
        assert c.metric_drop > budget
        assert c.reject_reason.startswith("metric drop"), c.reject_reason
    assert [(ch.candidate, ch.precision.value) for ch in manifest.choices] == [("fp32-opt", "fp32")]


def test_loose_budget_accepts_int8_on_accuracy(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = digits_doc(digits, **{"spec.validation.maxAccuracyDrop": 0.05,
                                "spec.optimization.targets": [{"hardwareClass": "cpu"}, {"hardwareClass": "gpu"}]})
    manifest = _convert(doc, tmp_path, keys, capsys)
    static = [c for c in manifest.candidates if c.name.startswith("int8-static")]
    assert static
    for c in static:
        assert c.metric_drop is not None
        assert c.metric_drop <= 0.05, c.name
        # Accepted, or rejected only because it was not faster than FP32 on this tiny model: never for accuracy.
        assert c.accepted or c.reject_reason.startswith("slower than the FP32 baseline"), c.reject_reason
    choices = {ch.hardware_class.value: ch for ch in manifest.choices}
    assert set(choices) == {"cpu", "gpu"}
    assert choices["gpu"].candidate == "fp16"
    assert "GPU latency not measured" in choices["gpu"].reason
    assert any("GPU latency is not measured" in n for n in manifest.notes)
    fp16 = next(c for c in manifest.candidates if c.name == "fp16")
    assert fp16.accepted
    assert fp16.size_bytes < next(c for c in manifest.candidates if c.name == "fp32-opt"
                                  and c.hardware_class.value == "gpu").size_bytes
