"""Trust decisions on signed manifest bytes (decide.check_manifest): in memory, no store, no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.control.decide import StepFailed, check_manifest
from edgemodel.api import ArtifactManifest, ModelAssignment
from edgemodel.signing import sign

KEY = Ed25519PrivateKey.generate()
SHA_FULL, SHA_HEAD = "a" * 64, "b" * 64
BASE = "http://store/default/m/2"

#: Stored bytes as an older converter wrote them: free-dict sections, its own key order and indentation.
OLD_BYTES = (
    '{"schemaVersion": 1, "model": "m", "namespace": "default", "revision": 2,\n'
    ' "validation": {"metric": "top1", "samples": 200, "maxAccuracyDrop": 0.01},\n'
    ' "environment": {"threads": 2, "loadAverage": [1.0, 0.5, 0.2], "cpuFlags": ["avx2"]},\n'
    f' "files": {{"model-cpu.onnx": "{SHA_FULL}", "head.onnx": "{SHA_HEAD}"}},\n'
    ' "split": {"cut": "h", "wire": "int8", "chosenBy": "manual", "files": ["head.onnx", "tail.onnx"]}}\n'
).encode()


def entry(
    file: str = "model-cpu.onnx", sha: str = SHA_FULL, signature: str | None = None, **extra: Any
) -> ModelAssignment:
    return ModelAssignment.model_validate({
        "name": "m", "namespace": "default", "revision": 2, "artifactUri": f"{BASE}/{file}", "sha256": sha,
        "manifestUri": f"{BASE}/manifest.json", "signature": signature or sign(OLD_BYTES, KEY), **extra})  # fmt: skip


def reason(data: bytes, a: ModelAssignment) -> str:
    with pytest.raises(StepFailed) as info:
        check_manifest(data, a, KEY.public_key())
    assert not info.value.retryable
    return info.value.reason


def test_a_manifest_signed_before_the_sections_were_typed_still_verifies_and_parses() -> None:
    manifest = check_manifest(OLD_BYTES, entry(), KEY.public_key())
    assert manifest.validation.samples == 200
    assert manifest.environment.load_average == [1.0, 0.5, 0.2]
    assert manifest.split is not None
    assert manifest.split.cut == "h"
    # The signature covers the stored bytes: a re-serialisation of the same manifest is other bytes.
    again = json.dumps(manifest.to_k8s(), indent=2).encode()
    assert again != OLD_BYTES
    assert reason(again, entry()) == "SignatureInvalid"


def test_altered_bytes_or_another_key_are_refused() -> None:
    assert reason(OLD_BYTES.replace(b'"samples": 200', b'"samples": 201'), entry()) == "SignatureInvalid"
    other = Ed25519PrivateKey.generate()
    assert reason(OLD_BYTES, entry(signature=sign(OLD_BYTES, other))) == "SignatureInvalid"


def test_the_manifest_must_vouch_for_this_revision_file_and_digest() -> None:
    assert reason(OLD_BYTES, entry(file="model-gpu.onnx")) == "ManifestMismatch"
    assert reason(OLD_BYTES, entry(sha="c" * 64)) == "DigestMismatch"
    wrong_revision = OLD_BYTES.replace(b'"revision": 2', b'"revision": 7')
    assert reason(wrong_revision, entry(signature=sign(wrong_revision, KEY))) == "ManifestMismatch"


def test_a_head_must_be_cut_where_the_signed_manifest_says() -> None:
    head = {"role": "head", "split": {"cut": "elsewhere", "cloudUrl": "https://cloud:9443"}}
    assert reason(OLD_BYTES, entry(file="head.onnx", sha=SHA_HEAD, **head)) == "ManifestMismatch"
    same = {"role": "head", "split": {"cut": "h", "cloudUrl": "https://cloud:9443"}}
    assert (
        check_manifest(OLD_BYTES, entry(file="head.onnx", sha=SHA_HEAD, **same), KEY.public_key()).model
        == "m"
    )


def test_a_signed_manifest_with_a_bad_value_names_the_field() -> None:
    bad = OLD_BYTES.replace(b'"samples": 200', b'"samples": -3')
    with pytest.raises(StepFailed) as info:
        check_manifest(bad, entry(signature=sign(bad, KEY)), KEY.public_key())
    assert info.value.reason == "ManifestInvalid"
    assert "validation.samples: " in info.value.message


def test_keys_of_a_newer_converter_do_not_make_an_agent_refuse_the_model() -> None:
    doc = json.loads(OLD_BYTES)
    doc["split"]["cutCost"] = {"edgeMs": 1.0}
    doc["validation"]["perClass"] = [0.9]
    doc["environment"]["npu"] = "none"
    doc["somethingNew"] = True
    data = json.dumps(doc).encode()
    manifest = check_manifest(data, entry(signature=sign(data, KEY)), KEY.public_key())
    assert isinstance(manifest, ArtifactManifest)
    assert manifest.split is not None
    assert manifest.split.model_extra == {"files": ["head.onnx", "tail.onnx"], "cutCost": {"edgeMs": 1.0}}
