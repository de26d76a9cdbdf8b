"""spec.outputs names the served outputs; spec.validation.labelsArray names the labels in the validation data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemodel.api import ArtifactManifest
from edgemodel.cli import main
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc, write_npz

ONLY_FP32 = {"spec.optimization.mode": "explicit", "spec.optimization.int8": {"enabled": False},
             "spec.optimization.fp16": False}
"""The fewest candidates: these tests are about names, not about the search."""


def graph_outputs(path: Path) -> list[str]:
    import onnxruntime as ort

    return [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]


def relabelled(digits: DigitsExample, tmp_path: Path) -> Path:
    """The validation data with its labels under "y" instead of "labels"."""
    with np.load(digits.val_npz) as val:
        return write_npz(tmp_path / "val-y.npz", input=val["input"], y=val["labels"])


@pytest.mark.parametrize("source", ["TorchScript", "ONNX"])
def test_outputs_and_the_labels_array_are_named_by_the_spec(
    source: str, digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    changes = {**ONLY_FP32, "spec.outputs": [{"name": "digit_scores"}],
               "spec.validation.dataUri": relabelled(digits, tmp_path).as_uri(), "spec.validation.labelsArray": "y"}
    if source == "ONNX":  # its graph names the output "logits": renamed
        changes |= {"spec.source.uri": digits_onnx.resolve().as_uri(), "spec.source.format": "ONNX"}
    out = tmp_path / "out"
    code = main(["convert", "-f", str(write_doc(digits_doc(digits, **changes), tmp_path)), "--output", str(out),
                 "--signing-key", str(keys.private), *FAST])
    assert code == 0, capsys.readouterr().err
    manifest = ArtifactManifest.model_validate_json((out / "manifest.json").read_bytes())
    assert [o.name for o in manifest.outputs] == ["digit_scores"]
    assert graph_outputs(out / "model-cpu.onnx") == ["digit_scores"]
    assert manifest.validation.metric == "top1", "the labels were found under spec.validation.labelsArray"
    assert manifest.validation.original > 0.9


def test_a_wrong_number_of_output_names_is_a_clear_error(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = digits_doc(digits, **ONLY_FP32, **{"spec.outputs": [{"name": "a"}, {"name": "b"}]})
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(tmp_path / "out"),
                 "--signing-key", str(keys.private), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "InvalidSpec: spec.outputs names 2 output(s) (a, b) but the model has 1 (output)" in err


def test_missing_labels_array_names_the_field(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = digits_doc(digits, **ONLY_FP32, **{"spec.validation.dataUri": relabelled(digits, tmp_path).as_uri()})
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(tmp_path / "out"),
                 "--signing-key", str(keys.private), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "has no 'labels' array" in err
    assert "other arrays: y" in err
    assert "spec.validation.labelsArray" in err
