"""A seeded generator of hostile v2 requests (binary extension, encodings, auth bytes, shape claims):
thousands of them, no answer >= 500, every error JSON, the agent alive and its memory bounded."""

from __future__ import annotations

import gzip
import json
import random
import resource
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_agent.settings import AgentSettings
from tests.agent.conftest import AgentThread, local

TOKEN = "fuzz-token"
COUNT = 2000
MODELS = ["affine", "identity", "fixed", "nope"]
DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT64", "UINT64", "BOOL", "BYTES", ["FP32"], {"a": 1}, None, 3, "fp32"]
NAMES = ["x", "in_BYTES", "in_BOOL", "in_FP32", "in_INT64", "y", "", None, 7]
VALID = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
HUGE = [0, 1, 2, 4, 7, 10**8, 2**31, 2**62, 2**64 + 1, -1]


def _shape(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.6:
        return [rng.choice([1, 2, 4]), rng.choice([1, 2, 4, 3])]
    if roll < 0.9:
        return [rng.choice(HUGE) for _ in range(rng.randint(0, 4))]
    return rng.choice([None, "1,4", {"0": 1}, [1.5, 2], [True, 4], [[1], [4]]])


def _values(rng: random.Random, n: int) -> list[Any]:
    pick = rng.choice(["float", "int", "bool", "str", "numstr", "mixed", "nested", "null"])
    make = {
        "float": lambda: rng.uniform(-1e6, 1e6), "int": lambda: rng.randint(-(2**65), 2**65), "bool": lambda: rng.random() < 0.5,
        "str": lambda: rng.choice(["a", "hé", "", "\x00"]), "numstr": lambda: str(rng.random()), "null": lambda: None,
        "mixed": lambda: rng.choice([1, 1.5, True, "1", None, [], {}]), "nested": lambda: [rng.random(), [rng.random()]],
    }[pick]  # fmt: skip
    return [make() for _ in range(n)]


def _tensor(rng: random.Random, binary: list[bytes]) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": rng.choice(NAMES), "datatype": rng.choice(DATATYPES), "shape": _shape(rng)}
    if rng.random() < 0.5:
        blob = _blob(rng, tensor)
        binary.append(blob)
        claimed = rng.choice([len(blob), len(blob), len(blob) + rng.randint(-3, 3), 2**40, -1, "4", None])
        tensor["parameters"] = {"binary_data_size": claimed}
        if rng.random() < 0.05:
            tensor["data"] = [1]
    else:
        tensor["data"] = _values(rng, rng.choice([0, 1, 2, 4, 8, 9]))
        if rng.random() < 0.1:
            tensor["parameters"] = rng.choice([[], "x", None, {}, {"binary_data_size": None}])
    return tensor


def _blob(rng: random.Random, tensor: dict[str, Any]) -> bytes:
    if tensor["datatype"] == "BYTES" and rng.random() < 0.7:
        items = [rng.randbytes(rng.randint(0, 6)) for _ in range(rng.randint(0, 4))]
        blob = b"".join(struct.pack("<I", rng.choice([len(i), len(i), 2**32 - 1, 10**6])) + i for i in items)
        return blob
    return rng.randbytes(rng.choice([0, 1, 4, 8, 16, 32, 33]))


def hostile_request(rng: random.Random) -> tuple[str, bytes, dict[str, Any]]:
    """(model path, body, headers) of one malformed (sometimes valid) request."""
    binary: list[bytes] = []
    body: dict[str, Any] = {"inputs": [_tensor(rng, binary) for _ in range(rng.randint(0, 3))]}
    if rng.random() < 0.2:
        body["parameters"] = rng.choice([[], {"binary_data_output": rng.choice([True, "yes"])}, None, 5])
    if rng.random() < 0.2:
        body["outputs"] = rng.choice([[{"name": "y", "parameters": rng.choice([[], {"binary_data": True}, {"binary_data": 1}])}], {}, [1]])
    if rng.random() < 0.1:
        body["id"] = rng.choice([1, None, "ok", ["x"]])
    head = json.dumps(body).encode()
    raw = head + b"".join(binary)
    headers: dict[str, Any] = {"Authorization": f"Bearer {TOKEN}"}
    if binary or rng.random() < 0.05:
        headers["Inference-Header-Content-Length"] = rng.choice([str(len(head))] * 4 + [str(len(raw) + 5), "0", "-3", "x", "1e3"])
    roll = rng.random()
    if roll < 0.1:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    elif roll < 0.15:
        raw, headers["Content-Encoding"] = zlib.compress(raw), "deflate"
    elif roll < 0.2:
        headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br", "gzip, gzip"])  # not really encoded
    elif roll < 0.25:
        raw = raw[: rng.randint(0, len(raw))]  # truncated
    roll = rng.random()
    if roll < 0.05:
        headers["Authorization"] = rng.choice([b"Bearer \xff\xfe", b"\xc3\x28", b"bearer " + TOKEN.encode(), b"Basic x"])
    elif roll < 0.07:
        del headers["Authorization"]
    if rng.random() < 0.05:  # raw non-UTF-8 bytes in another header
        headers[rng.choice(["Content-Encoding", "Inference-Header-Content-Length", "Content-Type"])] = rng.choice(
            [b"\xff\xfe", b"gzip\xc3", b"12\xe9"])
    model = rng.choice(MODELS)
    path = f"/v2/models/{model}/infer" if rng.random() < 0.95 else f"/v2/models/{model}/versions/{rng.choice(['1', 'x', '%ff'])}/infer"
    return path, raw, headers


def rss_bytes() -> int:
    """Resident memory of this process (the agent runs in a thread of it)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


@pytest.fixture(scope="module")
def fuzzed(model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    token_file = tmp_path_factory.mktemp("fuzz") / "token"
    token_file.write_text(TOKEN)
    models = local(model_files, "affine=affine1", "identity=identity", "fixed=fixed")
    with AgentThread(AgentSettings(port=0, token_file=token_file), models) as running:  # default limits
        yield running


def test_thousands_of_hostile_requests_never_5xx_and_memory_stays_bounded(fuzzed: AgentThread) -> None:
    rng = random.Random(13)
    session = requests.Session()
    answered: dict[int, int] = {}
    before = rss_bytes()
    peak = before
    started = time.monotonic()
    for number in range(COUNT):
        path, body, headers = hostile_request(rng)
        response = session.post(f"{fuzzed.url}{path}", data=body, headers=headers, timeout=30)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"request {number} ({body[:200]!r}, {headers}) got {response.status_code}: {response.text}"
        if response.status_code >= 400:
            assert response.headers["Content-Type"].startswith("application/json"), response.text
            assert isinstance(response.json()["error"], str)
            assert response.json()["error"]
        if number % 100 == 0:
            peak = max(peak, rss_bytes())
            valid = session.post(f"{fuzzed.url}/v2/models/affine/infer", headers={"Authorization": f"Bearer {TOKEN}"}, json=VALID, timeout=10)
            assert valid.status_code == 200, valid.text
            assert valid.json()["outputs"][0]["data"] == [1.0, 1.0, 1.0, 1.0]
        assert time.monotonic() - started < 300, f"only {number} requests in 300 s"
    peak = max(peak, rss_bytes())
    assert peak - before < 100 << 20, f"RSS grew by {(peak - before) >> 20} MiB over {COUNT} hostile requests"
    assert sum(answered.values()) == COUNT
    assert {400, 401, 404, 413} <= set(answered), answered  # the generator reaches every kind of refusal
