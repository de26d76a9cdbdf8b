"""Hostile requests (issue 13): claims checked before allocating, bounded bodies, 4xx JSON for everything."""

from __future__ import annotations

import gc
import gzip
import json
import socket
import struct
import time
import tracemalloc
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edge_agent import codec
from edge_agent.codec import decode_request
from edge_agent.errors import InvalidInput, PayloadTooLarge
from edge_agent.settings import AgentSettings
from tests.agent.conftest import AgentThread, local

TOKEN = "hostile-test-token"


@pytest.fixture(scope="module")
def guarded(model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    """An agent with a token and small limits, so each limit is reached with small requests."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    settings = AgentSettings(
        port=0, token_file=token_file, max_body_bytes=64 * 1024, max_decompressed_bytes=128 * 1024,
        max_json_bytes=32 * 1024, max_elements=1000, body_read_timeout_s=0.5,
    )  # fmt: skip
    with AgentThread(settings, local(model_files, "affine=affine1", "identity=identity")) as running:
        yield running


AUTH = {"Authorization": f"Bearer {TOKEN}"}
AFFINE = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def post(agent: AgentThread, model: str, data: bytes, headers: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{agent.url}/v2/models/{model}/infer", data=data, headers={**AUTH, **(headers or {})}, timeout=30)


def assert_error(response: requests.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    assert fragment in response.json()["error"], response.json()


def bytes_claim(count: int) -> tuple[bytes, dict[str, str]]:
    """The 121-byte attack: a BYTES tensor claiming ``count`` rows of binary data that holds one element."""
    head = json.dumps({"inputs": [{"name": "in_BYTES", "shape": [count, 2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 5}}]}).encode()  # fmt: skip
    return head + struct.pack("<I", 1) + b"a", {"Inference-Header-Content-Length": str(len(head))}


# -- 1. a shape claim is checked before anything is allocated -----------------------------------
def test_a_huge_bytes_claim_is_refused_before_allocating() -> None:
    body, headers = bytes_claim(50_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="exceed the agent's limit of 4194304 elements"):
            decode_request(body, int(headers["Inference-Header-Content-Length"]))
        with pytest.raises(InvalidInput, match="need at least 400000000 bytes"):  # even with no element limit
            decode_request(body, int(headers["Inference-Header-Content-Length"]), codec.DecodeLimits(max_elements=1 << 40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a 121-byte request allocated {peak} bytes"


def test_shape_claims_are_checked_against_the_model_and_the_limit(guarded: AgentThread) -> None:
    body, headers = bytes_claim(50_000_000)
    started = time.monotonic()
    assert_error(post(guarded, "identity", body, headers), 413, "limit of 1000 elements per request")
    assert time.monotonic() - started < 10  # no 900 MB allocation, no freeze (generous: the machine may be busy)
    big = {"inputs": [{"name": "x", "shape": [300, 4], "datatype": "FP32", "parameters": {"binary_data_size": 4800}}]}
    head = json.dumps(big).encode()
    raw = head + bytes(4800)
    assert_error(post(guarded, "affine", raw, {"Inference-Header-Content-Length": str(len(head))}), 413, "1200 elements")
    wrong = {"inputs": [{"name": "x", "shape": [1, 100_000_000], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}
    head = json.dumps(wrong).encode()
    response = post(guarded, "affine", head + bytes(4), {"Inference-Header-Content-Length": str(len(head))})
    assert_error(response, 400, "does not match the model's [-1, 4]")


# -- 2. every bad input is a 4xx with {"error": ...} --------------------------------------------
@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", b"\xff", b"Bearer " + TOKEN.encode() + b"\xe9"])
def test_non_utf8_authorization_is_401(guarded: AgentThread, value: bytes) -> None:
    response = requests.post(f"{guarded.url}/v2/models/affine/infer", json=AFFINE, headers={"Authorization": value}, timeout=10)
    assert_error(response, 401, "bearer token")


@pytest.mark.parametrize(
    ("header", "status"), [("Content-Encoding", 415), ("Inference-Header-Content-Length", 400), ("Content-Type", 200)]
)
def test_non_utf8_bytes_in_other_headers_are_4xx(guarded: AgentThread, header: str, status: int) -> None:
    response = post(guarded, "affine", json.dumps(AFFINE).encode(), {header: b"gz\xff\xfeip"})
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.json()["error"]


@pytest.mark.parametrize("datatype", [["FP32"], {"FP32": 1}, 7, None])
def test_datatype_of_the_wrong_json_type_is_400(guarded: AgentThread, datatype: object) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": [1, 2, 3, 4]}]}
    assert_error(post(guarded, "affine", json.dumps(body).encode()), 400, "is not one of BOOL")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_corrupt_or_truncated_compressed_bodies_are_400(guarded: AgentThread, encoding: str) -> None:
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    assert_error(post(guarded, "affine", b"\x1f\x8b\x08\x00garbage-not-compressed", headers), 400, f"not valid {encoding}")
    good = gzip.compress(json.dumps(AFFINE).encode()) if encoding == "gzip" else zlib.compress(json.dumps(AFFINE).encode())
    assert_error(post(guarded, "affine", good[:-6], headers), 400, "truncated")
    ok = post(guarded, "affine", good, headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def raw_exchange(agent: AgentThread, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, Any], float]:
    """Send raw bytes, read the whole answer; (status, JSON body, seconds until the answer)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), None)
                if length is not None and len(body) >= length:
                    break
    elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), data[:500]
    return int(head.split(b" ")[1]), json.loads(body), elapsed


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "header-too-long", "bad-content-length", "bad-chunk"],
)
def test_errors_aiohttp_answers_itself_are_json(guarded: AgentThread, request_bytes: bytes) -> None:
    status, body, _ = raw_exchange(guarded, request_bytes)
    assert 400 <= status < 500
    assert "malformed HTTP request" in body["error"] or "error" in body


# -- 3. no stalls: bounded sizes, bounded waits ----------------------------------------------
def test_a_stalled_body_is_answered_408_after_the_read_timeout(guarded: AgentThread) -> None:
    head = (f"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()  # fmt: skip
    status, body, elapsed = raw_exchange(guarded, head + b'{"inputs": [')
    assert status == 408, body
    assert "stalled" in body["error"]
    assert elapsed < 10  # 0.5 s timeout; the old agent kept such a request open for over 100 s


def test_a_gzip_bomb_stops_at_the_decompressed_limit(guarded: AgentThread) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 64 * 1024
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert_error(post(guarded, "affine", bomb, headers), 413, "decompresses to more than the limit of 131072 bytes")
    assert post(guarded, "affine", json.dumps(AFFINE).encode()).status_code == 200


def test_json_and_bodies_beyond_their_limits_are_413(guarded: AgentThread) -> None:
    padded = json.dumps({**AFFINE, "id": "x" * 40_000}).encode()
    assert_error(post(guarded, "affine", padded), 413, "JSON part of the request is")
    assert_error(post(guarded, "affine", b" " * 70_000), 413, "exceeds the limit of 65536 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b" " * 8192

    assert_error(post(guarded, "affine", chunks()), 413, "exceeds the limit of 65536 bytes")  # type: ignore[arg-type]


# -- 4. accepted though invalid / refused though valid --------------------------------------
@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (["0.1", "0.2", "0.3", "0.4"], "holds strings"),
        ([True, False, True, False], "holds true/false values"),
        ([1.0, True, 2.0, 3.0], "holds true/false values"),
        ([[1.0, "2"], [3.0, 4.0]], "holds strings"),
        ([1.0, None, 2.0, 3.0], "holds nulls"),
    ],
)
def test_strings_booleans_and_nulls_are_not_numbers(guarded: AgentThread, data: list[Any], fragment: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": data}]}
    assert_error(post(guarded, "affine", json.dumps(body).encode()), 400, fragment)


def test_integers_refuse_booleans_and_bools_refuse_integers(guarded: AgentThread) -> None:
    ints = {"inputs": [{"name": "in_INT32", "shape": [1, 2], "datatype": "INT32", "data": [1, True]}]}
    assert_error(post(guarded, "identity", json.dumps(ints).encode()), 400, "holds true/false values")
    bools = {"inputs": [{"name": "in_BOOL", "shape": [1, 2], "datatype": "BOOL", "data": [1, 0]}]}
    assert_error(post(guarded, "identity", json.dumps(bools).encode()), 400, "holds integers")


@pytest.mark.parametrize("where", ["request", "input", "output"])
def test_parameters_must_be_an_object(guarded: AgentThread, where: str) -> None:
    body: dict[str, Any] = json.loads(json.dumps(AFFINE))
    if where == "request":
        body["parameters"] = []
    elif where == "input":
        body["inputs"][0]["parameters"] = []
    else:
        body["outputs"] = [{"name": "y", "parameters": []}]
    assert_error(post(guarded, "affine", json.dumps(body).encode()), 400, "parameters must be a JSON object")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(guarded: AgentThread, scheme: str) -> None:
    response = requests.post(f"{guarded.url}/v2/models/affine/infer", json=AFFINE,
                             headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=10)  # fmt: skip
    assert response.status_code == 200, response.text
    wrong = requests.post(f"{guarded.url}/v2/models/affine/infer", json=AFFINE,
                          headers={"Authorization": f"Basic {TOKEN}"}, timeout=10)  # fmt: skip
    assert wrong.status_code == 401


def test_valid_typed_requests_still_decode_exactly() -> None:
    body = {"inputs": [
        {"name": "f", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
        {"name": "i", "shape": [2], "datatype": "UINT64", "data": [0, 2**64 - 1]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hé"]},
        {"name": "h", "shape": [1], "datatype": "FP16", "data": 1.5},
    ]}  # fmt: skip
    request = decode_request(json.dumps(body).encode())
    f, i, b, s, h = (t.data for t in request.inputs)
    np.testing.assert_array_equal(f, np.array([[1, 2.5], [3, 4]], dtype=np.float32))
    assert i.dtype == np.uint64
    assert i.tolist() == [0, 2**64 - 1]
    assert b.dtype == np.bool_
    assert b.tolist() == [True, False]
    assert s.tolist() == ["hé"]
    assert h.dtype == np.float16
    assert h.tolist() == [1.5]
    with pytest.raises(InvalidInput, match="outside the INT8 range"):
        decode_request(json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "INT8", "data": [300]}]}).encode())


def test_json_made_of_containers_is_refused_before_parsing() -> None:
    """``[[],[],...]`` costs 56 bytes per 3 bytes of text once parsed: refused by counting, not parsing."""
    attack = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [' + b"[]," * 400_000 + b"[]]}]}"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="more than the .* allowed"):
            decode_request(attack)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(attack), f"refusing {len(attack)} bytes of JSON allocated {peak} bytes"
    nested = np.full((1, 3, 256, 256), 0.25, dtype=np.float32).tolist()  # a real nested image passes
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 256, 256], "datatype": "FP32", "data": nested}]}).encode()
    assert len(body) > codec.JSON_UNCOUNTED_BYTES
    assert decode_request(body).inputs[0].data.shape == (1, 3, 256, 256)


def test_json_made_of_short_strings_is_refused_before_parsing() -> None:
    """orjson's peak is ~24x the text for short strings: their count is bounded by the BYTES element limit."""
    def attack(count: int, text: bytes) -> bytes:
        return b'{"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": [' + b",".join([text] * count) + b"]}]}"

    with pytest.raises(PayloadTooLarge, match="about 25000[0-9] strings, more than the 66560"):
        decode_request(attack(250_000, b'"ab"'))
    with pytest.raises(InvalidInput, match="needs 3 elements, data has 62000"):  # within the limit: parsed, then checked
        decode_request(attack(62_000, b'"abcdefghijklmno"'))


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(guarded: AgentThread) -> None:
    head = (f"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 1000\r\n\r\n").encode()  # fmt: skip
    assert guarded.server is not None
    metrics = guarded.server.metrics
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(head + b'{"inputs": [')
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while 'code="400",model="affine"' not in metrics.exposition().decode() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = metrics.exposition().decode()
    assert 'code="400",model="affine"' in text
    assert 'code="500"' not in text


def test_refused_bodies_are_freed_at_once_not_at_the_next_gc_pass(guarded: AgentThread) -> None:
    """A reference cycle through a refusal's traceback kept each refused body alive until a GC pass:
    sequential hostile requests then added up (8 MB each with the default limits)."""
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}).encode()
    body = head + bytes(50_000)  # binary data that no input claims: refused after the whole body is read
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            response = post(guarded, "affine", body, {"Inference-Header-Content-Length": str(len(head))})
            assert response.status_code == 400, response.text
        holding = [f.f_code.co_name for f in gc.get_objects() if type(f) is types.FrameType
                   and any(isinstance(v, bytearray) and len(v) >= 50_000 for v in f.f_locals.values())]  # fmt: skip
    finally:
        gc.enable()
    assert holding == [], f"frames still holding refused bodies: {holding}"
