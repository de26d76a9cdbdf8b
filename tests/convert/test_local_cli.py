"""`edgemodel convert -f ... --output DIR`: a real TorchScript model converted end to end, signed and verified."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from edgemodel.api import ArtifactManifest, ConversionResult
from edgemodel.cli import main
from edgemodel.signing import SignatureError, load_public_key, sha256_file, verify
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc


def test_torchscript_model_converts_with_signed_manifest_and_verified_digests(
    digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    flags = [f for f in FAST if f != "--no-plot"]
    code = main(["convert", "-f", str(write_doc(digits_doc(digits), tmp_path)), "--output", str(out),
                 "--signing-key", str(keys.private), *flags])
    assert code == 0, capsys.readouterr().err
    for name in ("manifest.json", "manifest.json.sig", "model-cpu.onnx", "report.md", "report.png", "result.json"):
        assert (out / name).is_file(), name

    raw = (out / "manifest.json").read_bytes()
    signature = (out / "manifest.json.sig").read_text().strip()
    public = load_public_key(keys.public.read_bytes())
    verify(raw, signature, public)
    with pytest.raises(SignatureError):
        verify(raw.replace(b'"revision": 1', b'"revision": 2'), signature, public)

    manifest = ArtifactManifest.model_validate_json(raw)
    assert set(manifest.files) == {"model-cpu.onnx", "report.md", "report.png"}
    for name, digest in manifest.files.items():
        assert sha256_file(out / name) == digest, name
        assert manifest.sizes[name] == (out / name).stat().st_size, name  # agents stop a download there
    assert manifest.source_sha256 == sha256_file(digits.model_pt)
    assert manifest.opset >= 17
    assert "dynamo" in manifest.exporter
    assert manifest.export_tolerance is not None
    assert manifest.export_tolerance < 1e-3
    assert manifest.export_check["passed"] is True
    assert [t.shape for t in manifest.inputs] == [[-1, 1, 8, 8]]
    assert manifest.outputs[0].shape == [-1, 10]

    names = {c.name for c in manifest.candidates}
    assert {"fp32-opt", "int8-dynamic-perchannel", "int8-static-qdq-u8s8-perchannel-minmax",
            "int8-static-qdq-s8s8-perchannel-minmax", "int8-static-qop-u8s8-perchannel-minmax"} <= names
    for c in manifest.candidates:
        assert c.sha256, c.name
        assert c.size_bytes > 0, c.name
        assert {s.batch_size for s in c.latency} == {1, 8}, c.name
        # --latency-rounds 3, paired by round; a candidate over 2x fp32-opt in round 1 stops there
        assert all(len(s.rounds_ms) in (1, 3) for s in c.latency), c.name
        if c.name == "fp32-opt" or c.accepted:
            assert all(len(s.rounds_ms) == 3 for s in c.latency), c.name
    complexity = {c.name: c.complexity for c in manifest.candidates}
    assert complexity["fp32-opt"] < complexity["int8-dynamic-perchannel"] < complexity[
        "int8-static-qdq-u8s8-perchannel-minmax"] < complexity["int8-static-qop-u8s8-perchannel-minmax"]
    assert manifest.measurement["rounds"] == 3
    assert manifest.measurement["minSpeedup"] == 1.05

    assert manifest.validation.metric == "top1"
    assert manifest.validation.samples == 200
    original = manifest.validation.original
    assert original > 0.9
    (choice,) = manifest.choices
    chosen = next(c for c in manifest.candidates if c.name == choice.candidate)
    baseline = next(c for c in manifest.candidates if c.name == "fp32-opt")
    assert chosen.accepted
    assert chosen.latency[0].p50_ms <= baseline.latency[0].p50_ms
    assert choice.sha256 == sha256_file(out / "model-cpu.onnx")
    # The reason says why: the simpler one kept within the noise, or the speed-up with its interval.
    if choice.candidate == "fp32-opt":
        assert choice.reason.startswith("fp32-opt kept: "), choice.reason
    else:
        assert " faster than fp32-opt, 95% CI [" in choice.reason, choice.reason
        assert choice.speedup_ci95 is not None
        assert choice.speedup_ci95[0] >= 1.05

    # The shipped file really classifies digits within the budget.
    import onnxruntime as ort

    val = np.load(digits.val_npz)
    logits = ort.InferenceSession(str(out / "model-cpu.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": val["input"]})[0]
    assert original - float((logits.argmax(1) == val["labels"]).mean()) <= 0.02 + 1e-9

    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    assert result.ok
    assert result.reason == "Converted"
    assert result.artifacts[0].uri == (out / "model-cpu.onnx").resolve().as_uri()
    assert result.artifacts[0].signature == signature
    assert sum(c.chosen for c in result.candidates) == 1
    report = (out / "report.md").read_text()
    assert "![latency vs top1](report.png)" in report
    assert "3 interleaved rounds per candidate" in report
    assert choice.candidate in report
    printed = capsys.readouterr().out
    assert "chosen" in printed
    assert "Converted revision 1" in printed


def test_generate_key_writes_a_private_pair_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "signing" / "private.pem"
    assert main(["convert", "--generate-key", "--signing-key", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "signing" / "public.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["convert", "--generate-key", "--signing-key", str(key)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_output_folder_holding_other_files_is_refused(
    digits: DigitsExample, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["convert", "-f", str(write_doc(digits_doc(digits), tmp_path)), "--output", str(out),
                 "--signing-key", str(keys.private), *FAST])
    assert code == 2
    assert "is not an earlier edgemodel conversion" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_missing_signing_key_is_a_one_line_error(digits: DigitsExample, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", "-f", str(write_doc(digits_doc(digits), tmp_path)), "--output", str(tmp_path / "o"),
                 "--signing-key", str(tmp_path / "nope.pem")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgemodel convert: error: --signing-key {tmp_path / 'nope.pem'}: no such file; pass an ed25519 "
                   "PEM key or add --generate-key"]
    assert not (tmp_path / "o").exists()
