"""Bad requests get a 4xx with {"error": "..."} naming the problem; never a 5xx, never a crash."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import numpy as np
import pytest
import requests

from tests.agent.conftest import AgentThread


def post(agent: AgentThread, path: str, body: Any = None, data: bytes | None = None, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{agent.url}{path}", json=body, data=data, headers=headers, timeout=10)


def affine_body(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return {"inputs": [tensor]}


CASES: list[tuple[str, str, dict[str, Any] | None, bytes | None, int, str]] = [
    ("unknown model", "/v2/models/nope/infer", affine_body(), None, 404, "model 'nope' is not loaded"),
    ("unknown version", "/v2/models/affine/versions/7/infer", affine_body(), None, 404, "no version '7'"),
    ("wrong input name", "/v2/models/affine/infer", affine_body(name="z"), None, 400, "'z' is not an input of model 'affine'"),
    ("wrong datatype", "/v2/models/affine/infer", affine_body(datatype="INT32", data=[1, 2, 3, 4]), None, 400, "datatype INT32 does not match"),
    ("unknown datatype", "/v2/models/affine/infer", affine_body(datatype="FP8"), None, 400, "datatype 'FP8' is not one of"),
    ("wrong shape", "/v2/models/affine/infer", affine_body(shape=[4, 1]), None, 400, "shape [4, 1] does not match the model's [-1, 4]"),
    ("wrong rank", "/v2/models/affine/infer", affine_body(shape=[4]), None, 400, "does not match the model's"),
    ("too few elements", "/v2/models/affine/infer", affine_body(data=[1, 2, 3]), None, 400, "needs 4 elements, data has 3"),
    ("too many elements", "/v2/models/affine/infer", affine_body(data=[1, 2, 3, 4, 5]), None, 400, "needs 4 elements, data has 5"),
    ("ragged data", "/v2/models/affine/infer", affine_body(data=[[1, 2], [3]]), None, 400, "ragged"),
    ("strings for floats", "/v2/models/affine/infer", affine_body(data=["a", "b", "c", "d"]), None, 400, "needs numbers; data holds strings"),
    ("negative dimension", "/v2/models/affine/infer", affine_body(shape=[-1, 4]), None, 400, "shape must be a list of non-negative integers"),
    ("missing data", "/v2/models/affine/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, None, 400, "data is missing"),
    ("no inputs", "/v2/models/affine/infer", {"inputs": []}, None, 400, "inputs must be a non-empty array"),
    ("inputs not a list", "/v2/models/affine/infer", {"inputs": {"x": 1}}, None, 400, "inputs must be a non-empty array"),
    ("duplicate input", "/v2/models/affine/infer",
     {"inputs": [affine_body()["inputs"][0], affine_body()["inputs"][0]]}, None, 400, "given twice"),
    ("unknown output", "/v2/models/affine/infer", {**affine_body(), "outputs": [{"name": "q"}]}, None, 400, "'q' is not an output"),
    ("id not a string", "/v2/models/affine/infer", {**affine_body(), "id": 5}, None, 400, "id must be a string"),
    ("malformed JSON", "/v2/models/affine/infer", None, b'{"inputs": [', 400, "not valid JSON"),
    ("JSON array body", "/v2/models/affine/infer", None, b"[1, 2]", 400, "must be a JSON object"),
    ("empty body", "/v2/models/affine/infer", None, b"", 400, "not valid JSON"),
    ("beyond FP32 range", "/v2/models/affine/infer", affine_body(data=[1e39, 1, 2, 3]), None, 400, "beyond the FP32 range"),
    ("beyond FP16 range", "/v2/models/identity/infer",
     {"inputs": [{"name": "in_FP16", "shape": [1, 2], "datatype": "FP16", "data": [[70000, 1]]}]}, None, 400, "beyond the FP16 range"),
    ("null for a float", "/v2/models/affine/infer", affine_body(data=[None, 1, 2, 3]), None, 400, "data holds nulls"),
    ("NaN literal", "/v2/models/affine/infer", None, b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}', 400, "not valid JSON"),
    ("int out of range", "/v2/models/identity/infer",
     {"inputs": [{"name": "in_UINT8", "shape": [1, 2], "datatype": "UINT8", "data": [1, 300]}]}, None, 400, "outside the UINT8 range"),
    ("float for int", "/v2/models/identity/infer",
     {"inputs": [{"name": "in_INT32", "shape": [1, 2], "datatype": "INT32", "data": [1, 2.5]}]}, None, 400, "INT32 needs integers"),
    ("missing input", "/v2/models/identity/infer",
     {"inputs": [{"name": "in_INT32", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}, None, 400, "also needs input(s)"),
    ("fixed dimension", "/v2/models/fixed/infer",
     {"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP32", "data": [0] * 9}]}, None, 400, "does not match the model's [2, 3]"),
    ("value the model rejects", "/v2/models/gather/infer",
     {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [99]}]}, None, 400, "the model rejected the input"),
    ("classification", "/v2/models/affine/infer", {**affine_body(), "parameters": {"classification": 2}}, None, 400, "classification is not supported"),
]


@pytest.mark.parametrize(("path", "body", "data", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_4xx_naming_the_problem(
    agent: AgentThread, path: str, body: dict[str, Any] | None, data: bytes | None, status: int, message: str
) -> None:
    r = post(agent, path, body=body, data=data)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert message in r.json()["error"]


def binary_request(agent: AgentThread, arr: np.ndarray, header_length: int | None = None, size: int | None = None, extra: bytes = b"") -> requests.Response:
    import json

    raw = arr.astype(np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": list(arr.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw) if size is None else size}}]}).encode()  # fmt: skip
    hl = len(head) if header_length is None else header_length
    return post(agent, "/v2/models/affine/infer", data=head + raw + extra, headers={"Inference-Header-Content-Length": str(hl)})


def test_binary_tensors_are_checked(agent: AgentThread) -> None:
    ok = binary_request(agent, np.ones((1, 4)))
    assert ok.status_code == 200, ok.text
    nan = binary_request(agent, np.array([[1.0, np.nan, 2.0, np.inf]]))
    assert nan.status_code == 400
    assert "NaN or infinite" in nan.json()["error"]
    short = binary_request(agent, np.ones((1, 4)), size=12)
    assert short.status_code == 400
    assert "needs 16 bytes" in short.json()["error"]
    over = binary_request(agent, np.ones((1, 4)), size=64)
    assert over.status_code == 400
    assert "exceeds the" in over.json()["error"]
    trailing = binary_request(agent, np.ones((1, 4)), extra=b"xyz")
    assert trailing.status_code == 400
    assert "no input's binary_data_size claims" in trailing.json()["error"]
    bad_header = binary_request(agent, np.ones((1, 4)), header_length=10_000)
    assert bad_header.status_code == 400
    assert "Inference-Header-Content-Length" in bad_header.json()["error"]
    r = post(agent, "/v2/models/affine/infer", data=b"{}", headers={"Inference-Header-Content-Length": "abc"})
    assert r.status_code == 400
    assert "must be an integer" in r.json()["error"]


def test_bool_and_bytes_binary_data_are_checked(agent: AgentThread) -> None:
    import json

    head = json.dumps({"inputs": [{"name": "in_BOOL", "shape": [1, 2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}).encode()
    r = post(agent, "/v2/models/identity/infer", data=head + b"\x01\x07", headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400
    assert "BOOL binary data must hold bytes 0 or 1" in r.json()["error"]
    blob = struct.pack("<I", 50) + b"abcdefgh"
    head = json.dumps({"inputs": [{"name": "in_BYTES", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = post(agent, "/v2/models/identity/infer", data=head + blob, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400
    assert "claims 50 bytes" in r.json()["error"]


def test_oversize_body_gets_413(agent: AgentThread) -> None:
    big = affine_body(shape=[20_000, 4], data=[0.5] * 80_000)  # ~ 320 KB of JSON, limit is 256 KiB
    r = post(agent, "/v2/models/affine/infer", body=big)
    assert r.status_code == 413
    assert "exceeds the limit of 262144 bytes" in r.json()["error"]
    chunked = requests.post(
        f"{agent.url}/v2/models/affine/infer", data=iter([b"x" * 100_000] * 4), timeout=10,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert chunked.status_code == 413, chunked.text
    assert post(agent, "/v2/models/affine/infer", body=affine_body()).status_code == 200  # still serving


def test_unsupported_encoding_method_and_path(agent: AgentThread) -> None:
    r = post(agent, "/v2/models/affine/infer", data=gzip.compress(b"{}"), headers={"Content-Encoding": "br"})
    assert r.status_code == 415
    assert "Content-Encoding br" in r.json()["error"]
    r = requests.get(f"{agent.url}/v2/models/affine/infer", timeout=10)
    assert r.status_code == 405
    assert "method GET is not allowed" in r.json()["error"]
    r = requests.get(f"{agent.url}/v3/whatever", timeout=10)
    assert r.status_code == 404
    assert "no such endpoint" in r.json()["error"]
    r = requests.get(f"{agent.url}/v2/models/nope", timeout=10)
    assert r.status_code == 404
    assert "'nope'" in r.json()["error"]
