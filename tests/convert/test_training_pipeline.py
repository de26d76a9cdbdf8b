"""Compression with training through the real conversion: candidates, labels, report, status, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemodel.api import ConversionResult
from edgemodel.cli import main
from edgemodel_dev.examples_models import DigitsExample, load_digits_data
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc, write_npz
from tests.convert.test_bad_input import convert_cli

PRUNED8 = "pruned-int8-static-qdq-u8s8-perchannel-minmax"
DISTILLED8 = "distilled-int8-static-qdq-u8s8-perchannel-minmax"
QAT = "qat-int8-qdq-u8s8-perchannel"


def _training(tmp_path: Path, labels: bool = True, samples: int = 256) -> str:
    data = load_digits_data()
    arrays: dict[str, np.ndarray] = {"input": data.x_train[:samples]}
    if labels:
        arrays["labels"] = data.y_train[:samples]
    return write_npz(tmp_path / ("train.npz" if labels else "unlabelled.npz"), **arrays).as_uri()


def _doc(digits: DigitsExample, tmp_path: Path, labels: bool = True, **optimization: Any) -> dict[str, Any]:
    doc = digits_doc(digits, **{"spec.optimization.mode": "explicit"})
    doc["spec"]["optimization"].update({"training": {"dataUri": _training(tmp_path, labels), "maxSeconds": 120},
                                        **optimization})
    return doc


def test_pruning_qat_and_distillation_become_gated_candidates(digits: DigitsExample, keys: Keys,
                                                              tmp_path: Path) -> None:
    doc = _doc(digits, tmp_path, pruning={"enabled": True, "targetSpeedup": 40, "fineTuneEpochs": 1},
               qat={"enabled": True, "epochs": 1},
               distillation={"enabled": True, "widthFactor": 0.5, "epochs": 2})
    out = tmp_path / "out"
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(out), "--signing-key",
                 str(keys.private), *FAST])
    assert code == 0
    result = ConversionResult.model_validate(json.loads((out / "result.json").read_text()))
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {c["name"]: c for c in manifest["candidates"]}
    methods = {name: by_name[name]["settings"].get("compression") for name in by_name}
    assert methods == {"fp32-opt": "", "int8-static-qdq-u8s8-perchannel-minmax": "", "pruned-fp32": "pruning",
                       PRUNED8: "pruning+int8", QAT: "qat", "distilled-fp32": "distillation",
                       DISTILLED8: "distillation+int8"}
    teacher_macs = by_name["fp32-opt"]["settings"]["macs"]
    assert by_name["pruned-fp32"]["settings"]["macs"] * 2 < teacher_macs
    assert by_name["distilled-fp32"]["settings"]["macs"] * 2 < teacher_macs
    assert by_name["distilled-fp32"]["settings"]["mixup"] is True, "mixup is on by default (float inputs)"
    qat = by_name[QAT]
    assert qat["precision"] == "int8"
    assert qat["error"] == ""
    assert qat["metricDrop"] <= 0.02, "QAT (one epoch from the trained model) stays within the accuracy gate"
    assert "metric drop" not in qat["rejectReason"]
    for name in (PRUNED8, DISTILLED8, "pruned-fp32", "distilled-fp32"):
        assert by_name[name]["error"] == "", name
        assert by_name[name]["latency"], f"{name} was timed"
    # targetSpeedup 40 cannot be met: the best accepted candidate is still chosen and the miss is said.
    chosen = manifest["choices"][0]
    assert chosen["reason"].startswith("target missed: spec.optimization.pruning.targetSpeedup 40x")
    assert any(n.startswith("Target missed") for n in manifest["notes"])
    assert "Target missed" in result.message
    summary = {c.name: c for c in result.candidates}
    assert summary["pruned-fp32"].method == "pruning"
    assert summary["pruned-fp32"].macs == by_name["pruned-fp32"]["settings"]["macs"]
    assert next(c for c in result.candidates if c.chosen).reason.startswith("target missed")
    report = (out / "report.md").read_text()
    assert "| method | MMACs |" in report
    assert "| pruning+int8 |" in report


def test_pruning_without_labels_is_refused_before_training(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(digits, tmp_path, labels=False, pruning={"enabled": True})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InvalidData: spec.optimization.training.dataUri: ")
    assert "has no 'labels' array, which pruning fine-tuning needs" in line


def test_qat_with_only_unlabelled_samples_is_refused_naming_the_field(
        digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_digits_data()
    uri = write_npz(tmp_path / "minus-one.npz", input=data.x_train[:64],
                    labels=np.full(64, -1, dtype=np.int64)).as_uri()
    doc = _doc(digits, tmp_path, qat={"enabled": True})
    doc["spec"]["optimization"]["training"]["dataUri"] = uri
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InvalidData: spec.optimization.training.dataUri: ")
    assert "has no 'labels' array (every label is -1, unlabelled), which qat fine-tuning needs" in line


def test_a_label_below_minus_one_is_refused_naming_the_field(
        digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_digits_data()
    labels = data.y_train[:64].copy()
    labels[3] = -3
    uri = write_npz(tmp_path / "bad-label.npz", input=data.x_train[:64], labels=labels).as_uri()
    doc = _doc(digits, tmp_path, distillation={"enabled": True, "widthFactor": 0.5, "epochs": 1})
    doc["spec"]["optimization"]["training"]["dataUri"] = uri
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InvalidData: spec.optimization.training.dataUri: ")
    assert "has label -3; labels are classes 0, 1, ... or -1 for an unlabelled sample" in line


def test_student_with_other_outputs_is_refused(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    student = tmp_path / "student.pt"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    torch.jit.save(torch.jit.script(model), str(student))
    # unlabelled training data is fine for distillation alone: it fails on the student, not on labels
    doc = _doc(digits, tmp_path, labels=False, distillation={
        "enabled": True, "epochs": 1, "student": {"uri": student.as_uri(), "format": "TorchScript"}})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("StudentMismatch: spec.optimization.distillation.student: the student outputs [2, 5] but "
                           "the teacher outputs [2, 10]")


@pytest.mark.parametrize(
    ("optimization", "expected"),
    [
        ({"pruning": {"enabled": True}}, "spec.optimization.training.dataUri: pruning, qat and distillation train"),
        ({"training": {"dataUri": "file:///t.npz"}, "distillation": {"enabled": True}},
         "spec.optimization.distillation.student: distillation needs exactly one student"),
    ],
    ids=["no-training-data", "no-student"],
)
def test_training_spec_errors_name_the_field(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], optimization: dict[str, Any],
                                             expected: str) -> None:
    doc = digits_doc(digits)
    doc["spec"]["optimization"].update(optimization)
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InvalidSpec: ")
    assert expected in line
