"""Every source format and URI scheme end to end, and the Job contract (env in, store + termination message out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from edgemodel.api import ArtifactManifest, ConversionResult
from edgemodel.cli import main
from edgemodel.signing import load_public_key, verify
from edgemodel.store import HttpStore, download, open_store
from edgemodel_dev.examples_models import DigitsExample
from tests.convert.conftest import FAST, Keys, digits_doc, write_doc
from tests.store.running import running_store
from tests.store.s3server import moto_s3

EDGEMODEL = str(Path(sys.executable).parent / "edgemodel")
TOKEN = "job-token"


def test_job_converts_torch_export_from_http_into_the_store(digits: DigitsExample, keys: Keys, tmp_path: Path) -> None:
    assert digits.model_pt2 is not None
    with running_store(tmp_path / "store", TOKEN) as url:
        client = HttpStore(url, TOKEN, retries=0)
        uris = {name: client.put_file(f"sources/{name}", path) for name, path in
                (("model.pt2", digits.model_pt2), ("calib.npz", digits.calib_npz), ("val.npz", digits.val_npz))}
        doc = digits_doc(digits, **{"metadata.namespace": "vision", "spec.source.uri": uris["model.pt2"],
                                    "spec.source.format": "TorchExport",
                                    "spec.optimization.int8.calibrationDataUri": uris["calib.npz"],
                                    "spec.validation.dataUri": uris["val.npz"]})
        doc["metadata"]["generation"] = 4
        termination = tmp_path / "termination-log"
        env = {**os.environ, "EDGEMODEL_OBJECT": json.dumps(doc), "EDGEMODEL_STORE_TOKEN": TOKEN,
               "EDGEMODEL_TERMINATION_LOG": str(termination)}
        proc = subprocess.run([EDGEMODEL, "convert", "--job", "--revision", "7", "--store-url", url,
                               "--signing-key", str(keys.private), *FAST], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Stage 4: Building candidates" in proc.stderr  # per-stage log lines
        message = termination.read_text()
        assert len(message.encode()) <= 4096
        result = ConversionResult.model_validate_json(message)
        assert result.ok
        assert result.reason == "Converted"
        assert result.revision == 7
        assert result.manifest_uri == f"{url}/vision/digits/7/manifest.json"
        assert proc.stdout.strip().splitlines()[-1] == message

        stored = ConversionResult.model_validate_json(requests.get(f"{url}/vision/digits/7/result.json", timeout=10).content)
        assert stored.artifacts == result.artifacts
        raw = requests.get(result.manifest_uri, timeout=10).content
        (artifact,) = result.artifacts
        verify(raw, artifact.signature, load_public_key(keys.public.read_bytes()))
        manifest = ArtifactManifest.model_validate_json(raw)
        assert manifest.source_format == "TorchExport"
        assert manifest.exporter.startswith("torch.onnx dynamo")
        got = download(artifact.uri, tmp_path / "model-cpu.onnx", sha256=artifact.sha256, retries=0)
        assert got == manifest.files["model-cpu.onnx"]
        listing = requests.get(f"{url}/vision/digits/7/", timeout=10).json()
        assert {e["name"] for e in listing["entries"]} == {"manifest.json", "manifest.json.sig", "model-cpu.onnx",
                                                          "report.md", "result.json"}

        # A retried Job finds the committed revision and reports it instead of converting again.
        again = subprocess.run([EDGEMODEL, "convert", "--job", "--revision", "7", "--store-url", url,
                                "--signing-key", str(tmp_path / "not-needed.pem")], env=env, capture_output=True,
                               text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        assert ConversionResult.model_validate_json(termination.read_text()).artifacts == result.artifacts


def test_onnx_source_from_s3_converts_and_uploads_to_an_s3_store(
    digits: DigitsExample, digits_onnx: Path, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with moto_s3(monkeypatch) as _endpoint:
        from edgemodel.store.s3 import s3_client

        s3 = s3_client()
        for key, path in (("digits/model.onnx", digits_onnx), ("digits/calib.npz", digits.calib_npz),
                          ("digits/val.npz", digits.val_npz)):
            s3.upload_file(str(path), "models", key)
        doc = digits_doc(digits, **{"spec.source.uri": "s3://models/digits/model.onnx", "spec.source.format": "ONNX",
                                    "spec.optimization.int8.calibrationDataUri": "s3://models/digits/calib.npz",
                                    "spec.validation.dataUri": "s3://models/digits/val.npz"})
        code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(tmp_path / "out"),
                     "--signing-key", str(keys.private), "--store-url", "s3://models/artifacts", "--revision", "2",
                     *FAST])
        assert code == 0, capsys.readouterr().err
        manifest = ArtifactManifest.model_validate_json((tmp_path / "out" / "manifest.json").read_bytes())
        assert manifest.exporter == "none (ONNX source)"
        assert manifest.opset == 17
        assert manifest.export_tolerance is not None
        assert manifest.export_tolerance < 1e-4
        store = open_store("s3://models/artifacts")
        result = ConversionResult.model_validate_json(store.get_bytes("default/digits/2/result.json"))
        assert result.artifacts[0].uri == "s3://models/artifacts/default/digits/2/model-cpu.onnx"
        assert store.get_bytes("default/digits/2/manifest.json") == (tmp_path / "out" / "manifest.json").read_bytes()


def test_onnx_model_with_a_fixed_batch_is_fed_whole_batches(digits: DigitsExample, keys: Keys, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    import torch

    fixed = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.load(str(digits.model_pt)), (torch.zeros(4, 1, 8, 8),), str(fixed), dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17)
    doc = digits_doc(digits, **{"spec.source.uri": fixed.as_uri(), "spec.source.format": "ONNX",
                                "spec.inputs": [{"name": "input", "shape": [4, 1, 8, 8]}]})
    code = main(["convert", "-f", str(write_doc(doc, tmp_path)), "--output", str(tmp_path / "out"),
                 "--signing-key", str(keys.private), *FAST])
    assert code == 0, capsys.readouterr().err
    manifest = ArtifactManifest.model_validate_json((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest.validation.samples == 200  # 200 validation images = 50 whole batches of 4
    assert {s.batch_size for c in manifest.candidates for s in c.latency} == {4}
    assert manifest.choices[0].metric is not None
    assert manifest.choices[0].metric > 0.9
    # the validation inputs' summary, signed with the manifest: the agents' PSI drift reference
    import numpy as np

    from edge_agent.drift import Reference, summarise

    ref = manifest.drift_reference
    assert ref is not None
    assert ref.input == "input"
    assert ref.samples == 200
    assert len(ref.edges) == 64  # 8x8 images: one feature per pixel
    with np.load(digits.val_npz) as z:
        x = z["input"][:200]
    expected = Reference.from_samples(summarise(x.reshape(len(x), -1)))
    shipped = Reference.from_manifest(ref)
    for got, want in zip(shipped.expected, expected.expected, strict=True):
        assert np.allclose(got, want, rtol=1e-6)
    for got, want in zip(shipped.edges, expected.edges, strict=True):
        assert np.allclose(got, want, rtol=1e-6)
