"""spec.split in the conversion: head.onnx, tail.onnx and split.json built, verified, signed and reported."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgemodel.api import ArtifactManifest, ConversionResult, EdgeModel
from edgemodel.cli import main
from edgemodel.convert.errors import ConversionError, Reason
from edgemodel.convert.job import publish
from edgemodel.convert.pipeline import (
    ConversionOutput,
    ConvertOptions,
    convert,
    failure_result,
    success_result,
    termination_message,
)
from edgemodel.signing import load_private_key, load_public_key, sha256_file, verify
from edgemodel.split.graph import find_cut_candidates
from edgemodel.store import HttpStore, RevisionRef, download
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc
from tests.store.running import running_store

SPLIT_FILES = {"head.onnx", "tail.onnx", "split.json"}
FP32_ONLY = [{"hardwareClass": "cpu", "precisions": ["fp32"]}]
"""No INT8 candidates: quicker, and the shipped model is FP32, so head+tail must match it to float rounding."""
STORE = "s3://edgemodel-artifacts-production/team-vision-namespace/digits-classifier-with-a-long-name/12"
"""A realistic artifact-store prefix, long enough to stress the 4 KiB termination message."""


def options(workdir: Path) -> ConvertOptions:
    return ConvertOptions(workdir=workdir, latency_runs=5, latency_budget_s=0.05, threads=1, plot=False,
                          split_profile_runs=1, latency_rounds=3)


def run(doc: dict[str, Any], keys: Keys, workdir: Path) -> ConversionOutput:
    return convert(EdgeModel.model_validate(doc), load_private_key(keys.private), options(workdir))


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def head_then_tail(folder: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ort_run(folder / "tail.onnx", ort_run(folder / "head.onnx", feeds))


def assert_signed_files(folder: Path, manifest_bytes: bytes, signature: str, keys: Keys) -> ArtifactManifest:
    verify(manifest_bytes, signature, load_public_key(keys.public.read_bytes()))
    manifest = ArtifactManifest.model_validate_json(manifest_bytes)
    assert set(manifest.files) >= SPLIT_FILES
    for name in SPLIT_FILES:
        assert (folder / name).is_file(), name
        assert manifest.files[name] == sha256_file(folder / name), name
    split_json = json.loads((folder / "split.json").read_text())
    assert split_json["head"]["sha256"] == manifest.files["head.onnx"]
    assert split_json["tail"]["sha256"] == manifest.files["tail.onnx"]
    assert manifest.split is not None
    assert split_json["cut"]["tensor"] == manifest.split.cut
    assert split_json["verification"]["passed"] is True
    return manifest


def assert_split_refs(result: ConversionResult, manifest: ArtifactManifest, uris: dict[str, str]) -> None:
    assert manifest.split is not None
    assert result.artifacts
    for artifact in result.artifacts:
        s = artifact.split
        assert s is not None, artifact.hardware_class
        assert (s.cut, s.wire, s.chosen_by) == (manifest.split.cut, manifest.split.wire,
                                                manifest.split.chosen_by)
        assert (s.head_uri, s.tail_uri, s.manifest_uri) == (uris["head.onnx"], uris["tail.onnx"], uris["split.json"])
        assert (s.head_sha256, s.tail_sha256) == (manifest.files["head.onnx"], manifest.files["tail.onnx"])
        assert s.feature_bytes == manifest.split.feature_bytes
        assert s.predicted_ms == manifest.split.predicted_ms


# --- manual cut through the CLI, on an ONNX source (cut names are the user's own graph's) ---------------------------


@dataclass(frozen=True)
class Manual:
    out: Path
    cut_tensor: str
    cut_node: str


@pytest.fixture(scope="module")
def manual(digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Manual:
    cuts = find_cut_candidates(digits_onnx)
    middle = cuts[len(cuts) // 2]  # named by its node (layer), as a user reading the graph would
    folder = tmp_path_factory.mktemp("manual")
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.optimization.targets": FP32_ONLY,
                                "spec.split": {"cut": middle.producer, "wire": "int8+zstd"}})
    code = main(["convert", "-f", str(write_doc(doc, folder)), "--output", str(folder / "out"),
                 "--signing-key", str(keys.private), *FAST])
    assert code == 0
    return Manual(folder / "out", middle.tensor, middle.producer)


def test_manual_cut_files_are_signed_and_listed_with_their_digests(manual: Manual, keys: Keys) -> None:
    raw = (manual.out / "manifest.json").read_bytes()
    manifest = assert_signed_files(manual.out, raw, (manual.out / "manifest.json.sig").read_text().strip(), keys)
    assert set(manifest.files) == {"model-cpu.onnx", "report.md", *SPLIT_FILES}
    assert manifest.split is not None
    assert manifest.split.cut == manual.cut_tensor
    assert manifest.split.chosen_by == "manual"
    assert manifest.split.wire == "int8+zstd"
    assert manifest.split.max_abs_diff == 0.0  # the same graph, cut in two
    assert manifest.split.verified_samples == 16
    assert "predictedMs" not in manifest.split.to_k8s()  # nothing is planned for a manual cut
    assert manifest.split.feature_bytes > 0
    report = (manual.out / "report.md").read_text()
    assert "## Split (edge-cloud)" in report
    assert f"Cut at `{manual.cut_tensor}`" in report
    assert f"named in spec.split.cut ('{manual.cut_node}')" in report
    assert f"{manifest.split.feature_bytes} bytes per sample in int8+zstd" in report


def test_manual_cut_head_then_tail_reproduce_the_whole_model(manual: Manual, digits: DigitsExample,
                                                             digits_onnx: Path) -> None:
    val = np.load(digits.val_npz)
    for feeds in ({"input": val["input"][:1]}, {"input": val["input"][1:2]}, {"input": val["input"][:32]}):
        want = ort_run(digits_onnx, feeds)["logits"]
        np.testing.assert_allclose(head_then_tail(manual.out, feeds)["logits"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ort_run(manual.out / "model-cpu.onnx", feeds)["logits"], want, rtol=1e-4, atol=1e-4)
    head_inputs = [i.name for i in ort.InferenceSession(str(manual.out / "head.onnx")).get_inputs()]
    tail_inputs = [i.name for i in ort.InferenceSession(str(manual.out / "tail.onnx")).get_inputs()]
    assert (head_inputs, tail_inputs) == (["input"], [manual.cut_tensor])


def test_manual_cut_result_carries_the_split_with_file_uris(manual: Manual) -> None:
    result = ConversionResult.model_validate_json((manual.out / "result.json").read_text())
    manifest = ArtifactManifest.model_validate_json((manual.out / "manifest.json").read_bytes())
    uris = {name: (manual.out / name).resolve().as_uri() for name in SPLIT_FILES}
    assert_split_refs(result, manifest, uris)
    assert f"split at {manual.cut_tensor} (manual)" in result.message


# --- auto cut through convert(), two hardware classes ----------------------------------------------------------------


@dataclass(frozen=True)
class Auto:
    output: ConversionOutput
    result: ConversionResult
    uris: dict[str, str]


@pytest.fixture(scope="module")
def auto(digits: DigitsExample, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Auto:
    doc = digits_doc(digits, **{
        "spec.optimization.targets": [{"hardwareClass": "cpu", "precisions": ["fp32"]},
                                      {"hardwareClass": "gpu", "precisions": ["fp32"]}],
        # No rttMs and nothing measured by the operator: the cut is planned for DEFAULT_SPLIT_RTT_MS (20 ms).
        "spec.split": {"cut": "auto", "link": {"bandwidthMbitS": 10}, "edgeSlowdown": 4}})
    output = run(doc, keys, tmp_path_factory.mktemp("auto"))
    uris = {name: f"{STORE}/{name}" for name in [*output.files, "result.json"]}
    return Auto(output, success_result(output, uris), uris)


def test_auto_cut_is_planned_signed_and_reproduces_the_whole_model(auto: Auto, digits: DigitsExample,
                                                                   keys: Keys) -> None:
    out = auto.output.directory
    manifest = assert_signed_files(out, auto.output.manifest_bytes, auto.output.signature, keys)
    assert manifest.to_k8s() == auto.output.manifest.to_k8s()
    split = manifest.split
    assert split is not None
    assert split.chosen_by == "auto"
    plan = json.loads((out / "split.json").read_text())["plan"]
    assert plan["chosen"]["option"] == f"cut:{split.cut}"
    assert plan["link"] == {"bandwidthMbitS": 10.0, "rttMs": 20.0}
    assert split.predicted_ms == pytest.approx(plan["chosen"]["totalMs"], abs=1e-3)
    assert split.predicted_ms >= 20.0  # at least the RTT
    assert split.candidates == len(plan["options"]) >= 5
    assert "chosen by the planner (latency) for 10 Mbit/s and RTT 20 ms" in split.reason
    report = (out / "report.md").read_text()
    assert f"Predicted end-to-end latency: {split.predicted_ms:.3f} ms" in report
    # head then tail give the shipped FP32 model's outputs and the same classes on every validation image
    val = np.load(digits.val_npz)
    feeds, name = {"input": val["input"]}, manifest.outputs[0].name
    got, want = head_then_tail(out, feeds)[name], ort_run(out / "model-cpu.onnx", feeds)[name]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_auto_cut_every_hardware_class_carries_the_same_split(auto: Auto) -> None:
    m = auto.output.manifest
    assert [a.hardware_class.value for a in auto.result.artifacts] == ["cpu", "gpu"]
    assert_split_refs(auto.result, m, auto.uris)
    assert auto.result.artifacts[0].split == auto.result.artifacts[1].split
    assert auto.result.artifacts[0].split is not None
    assert auto.result.artifacts[0].split.head_uri == f"{STORE}/head.onnx"


def test_termination_message_with_two_classes_and_a_split_fits_4_kib(auto: Auto) -> None:
    text = termination_message(auto.result)
    assert len(text.encode()) <= 4096
    parsed = ConversionResult.model_validate_json(text)
    assert parsed.ok
    assert [a.split for a in parsed.artifacts] == [a.split for a in auto.result.artifacts]  # never trimmed
    # Even with more candidates than fit (every INT8 variant), only the candidate list gives way.
    crowded = auto.result.model_copy(update={"candidates": auto.result.candidates * 30})
    slim = ConversionResult.model_validate_json(termination_message(crowded))
    assert slim.candidates == []
    assert slim.artifacts == auto.result.artifacts
    assert slim.message == auto.result.message


def test_publishing_to_the_store_uploads_the_parts_behind_the_result_uris(auto: Auto, tmp_path: Path) -> None:
    ref = RevisionRef("vision", "digits", 3)
    with running_store(tmp_path / "store", "t") as url:
        result = publish(auto.output, HttpStore(url, "t", retries=0), ref)
        (cpu, gpu) = result.artifacts
        assert cpu.split is not None
        assert cpu.split == gpu.split
        assert cpu.split.head_uri == f"{url}/vision/digits/3/head.onnx"
        for uri, digest, name in ((cpu.split.head_uri, cpu.split.head_sha256, "head.onnx"),
                                  (cpu.split.tail_uri, cpu.split.tail_sha256, "tail.onnx"),
                                  (cpu.split.manifest_uri, auto.output.manifest.files["split.json"], "split.json")):
            assert download(uri, tmp_path / name, sha256=digest, retries=0) == digest
            assert (tmp_path / name).read_bytes() == (auto.output.directory / name).read_bytes()


# --- quantised parts on a fixed-batch ONNX model without INT8 candidates ----------------------------------------------


def test_quantized_parts_on_a_fixed_batch_model(digits: DigitsExample, keys: Keys, tmp_path: Path) -> None:
    import torch

    fixed = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.load(str(digits.model_pt)), (torch.zeros(4, 1, 8, 8),), str(fixed), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
    cut = find_cut_candidates(fixed)[-1].tensor
    # int8 disabled: calibration data is fetched for the parts all the same
    doc = digits_doc(digits, **{"spec.source.uri": fixed.as_uri(), "spec.source.format": "ONNX",
                                "spec.inputs": [{"name": "input", "shape": [4, 1, 8, 8]}],
                                "spec.optimization.int8.enabled": False,
                                "spec.split": {"cut": cut, "quantizeParts": True}})
    output = run(doc, keys, tmp_path / "work")
    split = output.manifest.split
    assert split is not None
    assert (split.cut, split.precision, split.feature_batch) == (cut, "int8", 4)
    assert 0 < split.quantized_max_abs_diff < 1.0
    assert split.max_abs_diff == 0.0  # the FP32 parts, verified before quantising
    assert split.verified_samples == 4  # 16 samples in whole batches of 4
    assert "(INT8 parts differ by up to" in (output.directory / "report.md").read_text()
    val = np.load(digits.val_npz)
    agree = []
    for start in range(0, 200, 4):
        feeds = {"input": val["input"][start:start + 4]}
        split_logits, full_logits = head_then_tail(output.directory, feeds)["logits"], ort_run(fixed, feeds)["logits"]
        agree.append(split_logits.argmax(1) == full_logits.argmax(1))
    assert np.concatenate(agree).mean() >= 0.97  # INT8 parts keep the classes of the FP32 model


# --- bad cuts and split none ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cut", "why"), [
    ("no_such_layer", "is neither a tensor nor a node of the model"),
    ("logits", "cannot be a cut: it is a graph input or output"),
])
def test_bad_cut_fails_fast_with_invalid_split(cut: str, why: str, digits: DigitsExample, digits_onnx: Path,
                                               keys: Keys, tmp_path: Path) -> None:
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.split": {"cut": cut}})
    with pytest.raises(ConversionError) as info:
        run(doc, keys, tmp_path / "work")
    error = info.value
    assert error.reason == Reason.INVALID_SPLIT
    assert error.exit_code == 2
    assert not error.retryable
    message = str(error)
    assert message.startswith(f"spec.split.cut: '{cut}' ")
    assert why in message
    first = find_cut_candidates(digits_onnx)[0].tensor
    assert f"valid cuts are [{first}, " in message
    assert "(9 in all)" in message
    assert not (tmp_path / "work" / "candidates").exists()  # refused before any candidate was built
    result = failure_result(error, 3)
    assert (result.reason, result.ok, result.retryable) == ("InvalidSplit", False, False)


def test_bad_cut_through_the_cli_is_one_line_and_exit_2(digits: DigitsExample, digits_onnx: Path, keys: Keys,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.split": {"cut": "no_such_layer"}})
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(tmp_path / "out"),
                 "--signing-key", str(keys.private), *FAST])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith("edgemodel convert: error: InvalidSplit: spec.split.cut: 'no_such_layer' is neither")
    assert not (tmp_path / "out").exists()


def test_split_none_builds_no_split_files(digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path) -> None:
    doc = digits_doc(digits, **{"spec.source.uri": digits_onnx.as_uri(), "spec.source.format": "ONNX",
                                "spec.optimization.targets": FP32_ONLY,
                                "spec.split": {"cut": "none", "wire": "int8+zstd"}})
    output = run(doc, keys, tmp_path / "work")
    assert output.manifest.split is None
    assert set(output.manifest.files) == {"model-cpu.onnx", "report.md"}
    assert not SPLIT_FILES & {p.name for p in output.directory.iterdir()}
    assert not (tmp_path / "work" / "split").exists()
    result = success_result(output, {name: f"{STORE}/{name}" for name in [*output.files, "result.json"]})
    assert [a.split for a in result.artifacts] == [None]
    assert "split" not in json.loads(termination_message(result))["artifacts"][0]
    assert "## Split" not in (output.directory / "report.md").read_text()
