"""Bad input ends with one clear line, a CamelCase reason and exit code 2, and nothing half-written."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemodel.api import ConversionResult
from edgemodel.cli import main
from edgemodel.convert.job import run_job
from edgemodel.convert.pipeline import ConvertOptions
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc, write_npz
from tests.store.running import running_store


def convert_cli(doc: dict[str, Any], tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `edgemodel convert -f` in-process; return the exit code and the single error line."""
    out = tmp_path / "out"
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(out), "--signing-key",
                 str(keys.private), *FAST])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgemodel convert: error:")]
    assert len(errors) == 1, errors
    assert not out.exists(), "a failed conversion must not leave an output folder"
    return code, errors[0].removeprefix("edgemodel convert: error: ")


def file_uri(path: Path) -> str:
    return path.resolve().as_uri()


class TinyNaN:
    """Builds a TorchScript model that accepts digits inputs and outputs NaN."""

    @staticmethod
    def save(path: Path) -> Path:
        import torch

        class NaNModel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(64, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.linear(x.flatten(1)) * float("nan")

        torch.jit.save(torch.jit.script(NaNModel()), str(path))
        return path


def test_unreadable_model_bytes(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    code, line = convert_cli(digits_doc(digits, **{"spec.source.uri": file_uri(garbage)}), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("SourceUnreadable: spec.source.uri:")
    assert "torch.jit.save" in line


def test_torch_save_checkpoint_is_not_a_model(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    checkpoint = tmp_path / "weights.pt"
    torch.save({"linear.weight": torch.zeros(2, 2)}, str(checkpoint))
    code, line = convert_cli(digits_doc(digits, **{"spec.source.uri": file_uri(checkpoint)}), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("SourceUnreadable:")
    assert "torch.save() checkpoint" in line


def test_missing_model_file(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = file_uri(tmp_path / "nowhere.pt")
    code, line = convert_cli(digits_doc(digits, **{"spec.source.uri": uri}), tmp_path, keys, capsys)
    assert code == 2
    assert line == f"SourceUnreadable: spec.source.uri: {uri} does not exist or is not a file; check the path"


@pytest.mark.parametrize(("declared", "actual"), [("TorchScript", "ONNX"), ("TorchScript", "TorchExport"),
                                                  ("ONNX", "TorchScript")])
def test_wrong_format(digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], declared: str, actual: str) -> None:
    assert digits.model_pt2 is not None
    path = {"ONNX": digits_onnx, "TorchExport": digits.model_pt2, "TorchScript": digits.model_pt}[actual]
    doc = digits_doc(digits, **{"spec.source.uri": file_uri(path), "spec.source.format": declared})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith(f"WrongFormat: spec.source.format is {declared} but")
    assert line.endswith(f"set spec.source.format: {actual}")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"spec.inputs": [{"name": "input", "shape": [-1, 64]}], "spec.optimization.int8.calibrationDataUri": None,
          "spec.validation.dataUri": None}, "the model rejects inputs shaped like spec.inputs"),
        ({"spec.inputs": [{"name": "input", "shape": [-1, 64]}]}, "spec.inputs[0] (input) has shape [-1, 64] but "
         "calibration data"),
        ({"spec.inputs": [{"name": "input", "shape": [-1, 1, 8, 8]}, {"name": "extra", "shape": [-1, 3]}]},
         "spec.inputs lists 2 input(s)"),
        ({"spec.inputs": [{"name": "input", "dtype": "int64", "shape": [-1, 1, 8, 8]}]},
         "spec.inputs[0] (input) is int64 but calibration data"),
    ],
    ids=["model-rejects-shape", "data-has-other-shape", "too-many-inputs", "wrong-dtype"],
)
def test_torch_input_mismatch(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              changes: dict[str, Any], expected: str) -> None:
    code, line = convert_cli(digits_doc(digits, **changes), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InputMismatch: ")
    assert expected in line


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([{"name": "image", "shape": [-1, 1, 8, 8]}], "spec.inputs names image but the ONNX model"),
        ([{"name": "input", "shape": [-1, 1, 9, 9]}], "the ONNX model takes [-1, 1, 8, 8]"),
    ],
    ids=["name", "shape"],
)
def test_onnx_input_mismatch(digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str], inputs: list[dict[str, Any]], expected: str) -> None:
    doc = digits_doc(digits, **{"spec.source.uri": file_uri(digits_onnx), "spec.source.format": "ONNX",
                                "spec.inputs": inputs, "spec.optimization.int8.calibrationDataUri": None,
                                "spec.validation.dataUri": None})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InputMismatch: ")
    assert expected in line


def test_calibration_data_without_the_input_array(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    calib = write_npz(tmp_path / "calib.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
    doc = digits_doc(digits, **{"spec.optimization.int8.calibrationDataUri": file_uri(calib)})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith(f"InputMismatch: calibration data {file_uri(calib)} has no array named 'input' (it has: pixels)")


def test_nan_outputs(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = TinyNaN.save(tmp_path / "nan.pt")
    code, line = convert_cli(digits_doc(digits, **{"spec.source.uri": file_uri(model)}), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("NonFiniteOutput: the original model outputs NaN or Inf on validation data")


def test_explicit_static_int8_without_calibration_data(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    doc = digits_doc(digits, **{"spec.optimization.mode": "explicit", "spec.optimization.int8.calibrationDataUri": None})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("MissingCalibrationData: ")
    assert "spec.optimization.int8.calibrationDataUri" in line


def test_calibration_data_that_does_not_exist(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    uri = file_uri(tmp_path / "calib-missing.npz")
    doc = digits_doc(digits, **{"spec.optimization.mode": "explicit",
                                "spec.optimization.int8.calibrationDataUri": uri})
    code, line = convert_cli(doc, tmp_path, keys, capsys)
    assert code == 2
    assert line == (f"MissingCalibrationData: spec.optimization.int8.calibrationDataUri: {uri} does not exist or is "
                    "not a file; check the path")


def test_source_digest_mismatch(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = convert_cli(digits_doc(digits, **{"spec.source.sha256": "0" * 64}), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith(f"SourceDigestMismatch: spec.source.sha256 is {'0' * 64} but")


def test_top1_needs_labels(digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val = write_npz(tmp_path / "val.npz", input=np.zeros((8, 1, 8, 8), np.float32))
    code, line = convert_cli(digits_doc(digits, **{"spec.validation.dataUri": file_uri(val)}), tmp_path, keys, capsys)
    assert code == 2
    assert line.startswith("InvalidData: ")
    assert "metric: agreement" in line


def test_budget_nobody_meets_fails_the_job_and_leaves_the_store_empty(
    digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = digits_doc(digits, **{"spec.source.uri": file_uri(digits_onnx), "spec.source.format": "ONNX",
                                "spec.optimization.targets": [{"hardwareClass": "cpu", "precisions": ["int8"]}],
                                "spec.validation.metric": "cosine", "spec.validation.maxAccuracyDrop": 0.0})
    termination = tmp_path / "termination"
    monkeypatch.setenv("EDGEMODEL_OBJECT", json.dumps(doc))
    monkeypatch.setenv("EDGEMODEL_STORE_TOKEN", "t")
    monkeypatch.setenv("EDGEMODEL_TERMINATION_LOG", str(termination))
    root = tmp_path / "store"
    with running_store(root, "t") as url:
        options = ConvertOptions(workdir=tmp_path, latency_runs=3, latency_budget_s=0.05, threads=1, plot=False,
                                 latency_rounds=3)
        code = run_job(1, url, keys.private, options)
    assert code == 2
    result = ConversionResult.model_validate_json(termination.read_text())
    assert not result.ok
    assert result.reason == "AccuracyBudgetNotMet"
    assert not result.retryable
    assert "spec.validation.maxAccuracyDrop 0" in result.message
    assert "\n" not in result.message
    assert not [p for p in root.rglob("*") if p.is_file()], "nothing may reach the store"


def test_unreachable_store_is_retryable(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("EDGEMODEL_OBJECT", json.dumps(digits_doc(digits)))
    monkeypatch.setenv("EDGEMODEL_TERMINATION_LOG", str(tmp_path / "termination"))
    assert run_job(1, f"http://127.0.0.1:{port}", keys.private) == 1
    result = ConversionResult.model_validate_json((tmp_path / "termination").read_text())
    assert result.reason == "StoreUnavailable"
    assert result.retryable


@pytest.mark.parametrize(("env", "reason"), [("{not json", "InvalidSpec"),
                                             ('{"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeModel", '
                                              '"metadata": {"name": "x"}, "spec": {}}', "InvalidSpec")])
def test_bad_edgemodel_object_in_job_mode(env: str, reason: str, keys: Keys, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEMODEL_OBJECT", env)
    monkeypatch.setenv("EDGEMODEL_TERMINATION_LOG", str(tmp_path / "termination"))
    assert run_job(1, "http://127.0.0.1:9", keys.private) == 2
    result = ConversionResult.model_validate_json((tmp_path / "termination").read_text())
    assert result.reason == reason
    assert not result.retryable


def test_unreadable_signing_key_in_job_mode(digits: DigitsExample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    monkeypatch.setenv("EDGEMODEL_OBJECT", json.dumps(digits_doc(digits)))
    monkeypatch.setenv("EDGEMODEL_TERMINATION_LOG", str(tmp_path / "termination"))
    with running_store(tmp_path / "store") as url:
        assert run_job(1, url, bad) == 2
    result = ConversionResult.model_validate_json((tmp_path / "termination").read_text())
    assert result.reason == "SigningKeyUnreadable"
    assert "--signing-key" in result.message
