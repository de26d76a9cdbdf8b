"""The store against hostile or unlucky requests (issue 13): 4xx JSON, never a 500, nothing left behind."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.store.running import AUTH, TOKEN, running_store


def assert_error(response: requests.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"], response.text


def test_a_put_racing_a_commit_leaves_nothing_inside_the_committed_revision(store: tuple[str, Path]) -> None:
    url, root = store
    assert requests.put(f"{url}/default/m/1/manifest.json", data=b"{}", headers=AUTH, timeout=10).status_code == 201
    first_chunk_sent, commit_done = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"x" * 1000
        first_chunk_sent.set()
        assert commit_done.wait(10)
        yield b"y" * 1000

    result: dict[str, requests.Response] = {}
    put = threading.Thread(target=lambda: result.setdefault("put", requests.put(
        f"{url}/default/m/1/model-cpu.onnx", data=slow_body(), headers=AUTH, timeout=20)))  # fmt: skip
    put.start()
    assert first_chunk_sent.wait(10)
    commit = requests.post(f"{url}/_commit/default/m/1", headers=AUTH, timeout=10)
    commit_done.set()
    put.join(20)
    assert commit.status_code == 201, commit.text
    assert_error(result["put"], 409, "already committed")
    assert sorted(p.name for p in (root / "default" / "m" / "1").iterdir()) == ["manifest.json"]  # no orphan .part
    assert not list((root / ".staging").rglob("*.part"))


@pytest.mark.parametrize("revision", ["%C2%B2", "%D9%A3", "0", "1" * 40])
def test_revisions_that_are_not_plain_positive_integers_are_400(store: tuple[str, Path], revision: str) -> None:
    url, _ = store
    assert_error(requests.post(f"{url}/_commit/default/m/{revision}", headers=AUTH, timeout=10), 400, "invalid revision")
    assert_error(requests.delete(f"{url}/_staging/default/m/{revision}", headers=AUTH, timeout=10), 400, "invalid revision")


def test_committing_where_the_model_folder_is_a_file_is_409(store: tuple[str, Path]) -> None:
    url, root = store
    assert requests.put(f"{url}/default/m", data=b"a file", headers=AUTH, timeout=10).status_code == 201
    assert requests.put(f"{url}/default/m/1/manifest.json", data=b"{}", headers=AUTH, timeout=10).status_code == 201
    assert_error(requests.post(f"{url}/_commit/default/m/1", headers=AUTH, timeout=10), 409, "default/m is a file")
    assert_error(requests.put(f"{url}/default/m/notes.txt", data=b"x", headers=AUTH, timeout=10), 409, "conflicts with an existing file")
    assert (root / "default" / "m").read_bytes() == b"a file"


def test_a_symlink_in_the_root_is_not_followed_out_of_it(store: tuple[str, Path], tmp_path: Path) -> None:
    url, root = store
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("private")
    (root / "default").mkdir(parents=True)
    (root / "default" / "escape").symlink_to(outside)
    assert_error(requests.get(f"{url}/default/escape/secret.txt", timeout=10), 400, "leads out of the store")
    assert_error(requests.get(f"{url}/default/escape", timeout=10), 400, "leads out of the store")
    assert requests.get(f"{url}/default", timeout=10).json()["entries"] == []  # not listed either
    assert_error(requests.put(f"{url}/default/escape/new.txt", data=b"x", headers=AUTH, timeout=10), 400, "leads out")
    assert_error(requests.delete(f"{url}/default/escape/secret.txt", headers=AUTH, timeout=10), 400, "leads out")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize("value", [b"Bearer \xff", b"\xc3\x28", b"Bearer " + TOKEN.encode() + b"\xff"])
def test_non_utf8_authorization_on_writes_is_401(store: tuple[str, Path], value: bytes) -> None:
    url, _ = store
    response = requests.put(f"{url}/default/x.txt", data=b"x", headers={"Authorization": value}, timeout=10)
    assert_error(response, 401, "bearer token")


def test_the_bearer_scheme_is_case_insensitive(store: tuple[str, Path]) -> None:
    url, _ = store
    response = requests.put(f"{url}/default/x.txt", data=b"x", headers={"Authorization": f"bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 201, response.text


def test_the_upload_limit_is_configurable_and_answered_in_json(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_store(root, TOKEN, max_upload_bytes=100_000) as url:
        check_upload_limit(url, root)


def check_upload_limit(url: str, root: Path) -> None:
    assert requests.put(f"{url}/default/ok.bin", data=b"x" * 100_000, headers=AUTH, timeout=10).status_code == 201
    assert_error(requests.put(f"{url}/default/big.bin", data=b"x" * 100_001, headers=AUTH, timeout=10), 413, "limit of 100000 bytes")
    assert not (root / "default" / "big.bin").exists()
    assert not list((root / ".staging").rglob("*.part"))


def test_errors_aiohttp_answers_itself_are_json(store: tuple[str, Path]) -> None:
    url, _ = store
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"PUT /default/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", data
    assert b"application/json" in head
    assert "malformed HTTP request" in json.loads(body)["error"]
