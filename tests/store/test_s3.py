"""S3-compatible storage against moto's real S3 server: downloads and the S3 store's commit marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemodel.store import RevisionExists, RevisionRef, StoreError, open_store
from edgemodel.store.s3 import COMMIT_MARKER, S3Uri, download_s3, s3_client
from tests.store.s3server import moto_s3


def test_s3_uri_parsing() -> None:
    assert S3Uri.parse("s3://models/a/b.pt") == S3Uri("models", "a/b.pt")
    with pytest.raises(ValueError, match="bucket"):
        S3Uri.parse("s3:///x")


def test_download_and_missing_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with moto_s3(monkeypatch):
        s3_client().put_object(Bucket="models", Key="digits/model.pt", Body=b"weights")
        download_s3("s3://models/digits/model.pt", tmp_path / "model.pt")
        assert (tmp_path / "model.pt").read_bytes() == b"weights"
        with pytest.raises(StoreError) as info:
            download_s3("s3://models/digits/missing.pt", tmp_path / "missing.pt")
        assert not info.value.retryable
        assert not (tmp_path / "missing.pt").exists()


def test_s3_store_writes_revision_with_commit_marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {}
    for name in ("model-cpu.onnx", "manifest.json", "manifest.json.sig", COMMIT_MARKER):
        files[name] = tmp_path / name
        files[name].write_text(name)
    with moto_s3(monkeypatch):
        store = open_store("s3://models/artifacts")
        store.health()
        ref = RevisionRef("default", "digits", 1)
        assert not store.exists(ref.key(COMMIT_MARKER))
        urls = store.put_revision(ref, files)
        assert urls["manifest.json"] == "s3://models/artifacts/default/digits/1/manifest.json"
        assert list(urls)[-1] == COMMIT_MARKER  # uploaded last: the revision counts as committed only then
        assert store.get_bytes(ref.key("model-cpu.onnx")) == b"model-cpu.onnx"
        with pytest.raises(RevisionExists):
            store.put_revision(ref, files)
