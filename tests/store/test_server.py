"""The HTTP artifact store: reads with Range, token-protected writes, atomic revision commits."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import requests

from edgemodel.store import HttpStore, RevisionExists, RevisionRef, StoreError
from edgemodel.store.layout import StoreLayout
from edgemodel.store.server import clean_stale
from tests.store.running import AUTH, TOKEN


def _revision_files(tmp_path: Path, marker: str) -> dict[str, Path]:
    files = {}
    for name, body in (("model-cpu.onnx", os.urandom(300_000)), ("manifest.json", f'{{"m": "{marker}"}}'.encode()),
                       ("manifest.json.sig", b"c2ln\n")):
        path = tmp_path / f"{marker}-{name}"
        path.write_bytes(body)
        files[name] = path
    return files


def test_healthz_answers(store: tuple[str, Path]) -> None:
    url, _ = store
    response = requests.get(f"{url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_staged_revision_is_invisible_until_commit(store: tuple[str, Path], tmp_path: Path) -> None:
    url, root = store
    files = _revision_files(tmp_path, "a")
    put = requests.put(f"{url}/default/digits/1/manifest.json?upload=u1", data=files["manifest.json"].read_bytes(),
                       headers=AUTH, timeout=10)
    assert put.status_code == 201
    assert put.json()["staged"] is True
    assert requests.get(f"{url}/default/digits/1/manifest.json", timeout=10).status_code == 404
    assert requests.head(f"{url}/default/digits/1/manifest.json", timeout=10).status_code == 404
    listing = requests.get(f"{url}/", timeout=10).json()
    assert listing["entries"] == []  # .staging is never listed
    commit = requests.post(f"{url}/_commit/default/digits/1?upload=u1", headers=AUTH, timeout=10)
    assert commit.status_code == 201
    assert commit.json()["files"] == ["manifest.json"]
    got = requests.get(f"{url}/default/digits/1/manifest.json", timeout=10)
    assert got.status_code == 200
    assert got.content == files["manifest.json"].read_bytes()
    assert (root / "default" / "digits" / "1" / "manifest.json").is_file()


def test_client_uploads_revision_atomically_and_revisions_are_immutable(store: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = store
    client = HttpStore(url, TOKEN, retries=0)
    ref = RevisionRef("default", "digits", 2)
    urls = client.put_revision(ref, _revision_files(tmp_path, "a"))
    assert urls["model-cpu.onnx"] == f"{url}/default/digits/2/model-cpu.onnx"
    body = requests.get(urls["model-cpu.onnx"], timeout=10).content
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256((tmp_path / "a-model-cpu.onnx").read_bytes()).hexdigest()
    with pytest.raises(RevisionExists):
        client.put_revision(ref, _revision_files(tmp_path, "b"))
    assert requests.get(urls["manifest.json"], timeout=10).json() == {"m": "a"}
    direct = requests.put(f"{url}/default/digits/2/manifest.json", data=b"{}", headers=AUTH, timeout=10)
    assert direct.status_code == 409


def test_concurrent_uploads_of_one_revision_do_not_mix(store: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = store
    for upload, marker in (("first", "a"), ("second", "b")):
        data = _revision_files(tmp_path, marker)["manifest.json"].read_bytes()
        response = requests.put(f"{url}/ns/m/1/manifest.json?upload={upload}", data=data, headers=AUTH, timeout=10)
        assert response.status_code == 201
    assert requests.post(f"{url}/_commit/ns/m/1?upload=second", headers=AUTH, timeout=10).status_code == 201
    assert requests.post(f"{url}/_commit/ns/m/1?upload=first", headers=AUTH, timeout=10).status_code == 409
    assert requests.get(f"{url}/ns/m/1/manifest.json", timeout=10).json() == {"m": "b"}


def test_commit_without_manifest_is_refused(store: tuple[str, Path]) -> None:
    url, _ = store
    requests.put(f"{url}/ns/m/4/model-cpu.onnx?upload=x", data=b"123", headers=AUTH, timeout=10)
    response = requests.post(f"{url}/_commit/ns/m/4?upload=x", headers=AUTH, timeout=10)
    assert response.status_code == 400
    assert "manifest.json" in response.json()["error"]
    assert requests.get(f"{url}/ns/m/4/model-cpu.onnx", timeout=10).status_code == 404


def test_range_requests_return_206_with_the_requested_bytes(store: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = store
    client = HttpStore(url, TOKEN, retries=0)
    files = _revision_files(tmp_path, "r")
    client.put_revision(RevisionRef("ns", "m", 1), files)
    whole = files["model-cpu.onnx"].read_bytes()
    head = requests.head(f"{url}/ns/m/1/model-cpu.onnx", timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(whole)
    assert head.headers["Accept-Ranges"] == "bytes"
    part = requests.get(f"{url}/ns/m/1/model-cpu.onnx", headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206
    assert part.content == whole[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(whole)}"


def test_writes_need_the_bearer_token_and_reads_do_not(store: tuple[str, Path]) -> None:
    url, _ = store
    assert requests.put(f"{url}/keys/public.pem", data=b"k", timeout=10).status_code == 401
    wrong = requests.put(f"{url}/keys/public.pem", data=b"k", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert requests.post(f"{url}/_commit/ns/m/1", timeout=10).status_code == 401
    assert requests.put(f"{url}/keys/public.pem", data=b"k", headers=AUTH, timeout=10).status_code == 201
    assert requests.get(f"{url}/keys/public.pem", timeout=10).content == b"k"
    with pytest.raises(StoreError) as info:
        HttpStore(url, "nope", retries=0).put_revision(RevisionRef("ns", "m", 1), {})
    assert info.value.status == 401
    assert not info.value.retryable


def test_checksum_mismatch_is_rejected_and_nothing_is_stored(store: tuple[str, Path]) -> None:
    url, root = store
    response = requests.put(f"{url}/keys/x.bin", data=b"payload", timeout=10,
                            headers={**AUTH, "X-Checksum-Sha256": "0" * 64})
    assert response.status_code == 400
    assert "sha256 mismatch" in response.text
    assert requests.get(f"{url}/keys/x.bin", timeout=10).status_code == 404
    assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("key", ["%2e%2e/%2e%2e/etc/passwd", ".staging/ns/m/1.u/manifest.json", "_commit/x"])
def test_reserved_and_traversal_keys_are_refused(store: tuple[str, Path], key: str) -> None:
    url, _ = store
    response = requests.get(f"{url}/{key}", timeout=10)
    assert response.status_code in (400, 404, 405)
    assert "root:" not in response.text


def test_writes_cannot_bypass_staging_into_a_revision_folder(store: tuple[str, Path]) -> None:
    url, _ = store
    for key in ("ns/m/3/sub/file", "ns/m/3"):
        response = requests.put(f"{url}/{key}", data=b"x", headers=AUTH, timeout=10)
        assert response.status_code == 400, key
        assert "revision folder" in response.json()["error"]


def test_abort_and_delete(store: tuple[str, Path], tmp_path: Path) -> None:
    url, root = store
    requests.put(f"{url}/ns/m/5/manifest.json?upload=ab", data=b"{}", headers=AUTH, timeout=10)
    assert requests.delete(f"{url}/_staging/ns/m/5?upload=ab", headers=AUTH, timeout=10).status_code == 204
    assert requests.post(f"{url}/_commit/ns/m/5?upload=ab", headers=AUTH, timeout=10).status_code == 400
    HttpStore(url, TOKEN, retries=0).put_revision(RevisionRef("ns", "m", 6), _revision_files(tmp_path, "d"))
    assert requests.delete(f"{url}/ns/m/6", headers=AUTH, timeout=10).status_code == 204
    assert requests.get(f"{url}/ns/m/6/manifest.json", timeout=10).status_code == 404
    assert not (root / "ns" / "m" / "6").exists()


def test_clean_stale_removes_old_staged_uploads_only(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    old = layout.staging_dir(RevisionRef("ns", "m", 1), "old")
    new = layout.staging_dir(RevisionRef("ns", "m", 2), "new")
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
    past = time.time() - 3 * 3600
    os.utime(old, (past, past))
    assert clean_stale(layout, max_age_s=3600) == 1
    assert not old.exists()
    assert new.exists()


def test_nothing_empty_is_left_after_commit_abort_and_delete(store: tuple[str, Path], tmp_path: Path) -> None:
    """Retention (`artifactRetention: delete`) leaves no empty {ns}/{name} or .staging/{ns}/{name} behind."""
    url, root = store
    requests.put(f"{url}/team-a/digits/1/manifest.json?upload=ab", data=b"{}", headers=AUTH, timeout=10)
    assert requests.delete(f"{url}/_staging/team-a/digits/1?upload=ab", headers=AUTH, timeout=10).status_code == 204
    assert not (root / ".staging" / "team-a").exists()
    client = HttpStore(url, TOKEN, retries=0)
    for revision in (1, 2):
        client.put_revision(RevisionRef("team-a", "digits", revision), _revision_files(tmp_path, str(revision)))
    client.put_revision(RevisionRef("team-a", "other", 1), _revision_files(tmp_path, "o"))
    assert not (root / ".staging" / "team-a").exists(), "a commit leaves no empty staging folders"
    assert requests.delete(f"{url}/team-a/digits/1", headers=AUTH, timeout=10).status_code == 204
    assert (root / "team-a" / "digits").is_dir(), "revision 2 is still there"
    assert requests.delete(f"{url}/team-a/digits/2", headers=AUTH, timeout=10).status_code == 204
    assert not (root / "team-a" / "digits").exists()
    assert (root / "team-a" / "other" / "1" / "manifest.json").is_file()
    assert requests.delete(f"{url}/team-a/other/1", headers=AUTH, timeout=10).status_code == 204
    assert not (root / "team-a").exists()
    assert requests.get(f"{url}/", timeout=10).json()["entries"] == []
    client.put_revision(RevisionRef("team-a", "digits", 3), _revision_files(tmp_path, "3"))
    assert requests.get(f"{url}/team-a/digits/3/manifest.json", timeout=10).status_code == 200
