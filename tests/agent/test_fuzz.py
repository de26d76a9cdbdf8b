"""Fuzz the REST API with hypothesis: whatever arrives, the agent answers below 500 and keeps serving."""

from __future__ import annotations

import json
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.conftest import AgentThread

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "UINT64", "BOOL", "BYTES", "fp32", "", "X"])
names = st.sampled_from(["x", "in_INT32", "in_BOOL", "in_BYTES", "in_FP16", "idx", "y", ""])
shapes = st.lists(st.integers(-2, 6), max_size=4) | json_values
tensors = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={"data": json_values | st.lists(st.integers(-300, 300) | st.floats(-1e6, 1e6, allow_nan=False), max_size=40),
              "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), st.integers(-5, 50) | json_values, max_size=2)},
)  # fmt: skip
requests_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=2) | json_values,
              "id": json_values, "parameters": json_values},
)  # fmt: skip
HEADER_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
"""Visible ASCII: what an HTTP header value may hold (anything else is refused by the HTTP parser)."""
models = st.sampled_from(["affine", "identity", "gather", "fixed", "affine/versions/1", "affine/versions/x", "nope"])


def check(response: requests.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
        assert response.json()["error"]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=models, body=requests_bodies)
def test_structured_requests_never_5xx(agent: AgentThread, model: str, body: dict[str, Any]) -> None:
    check(requests.post(f"{agent.url}/v2/models/{model}/infer", data=json.dumps(body), timeout=10))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=models, raw=st.binary(max_size=300), header=st.none() | st.integers(-5, 400).map(str) | st.text(HEADER_CHARS, max_size=4))
def test_raw_bytes_and_binary_headers_never_5xx(agent: AgentThread, model: str, raw: bytes, header: str | None) -> None:
    headers = {"Inference-Header-Content-Length": header} if header is not None else {}
    check(requests.post(f"{agent.url}/v2/models/{model}/infer", data=raw, headers=headers, timeout=10))


def test_still_serving_after_the_fuzzing(agent: AgentThread) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    r = requests.post(f"{agent.url}/v2/models/affine/infer", json=body, timeout=10)
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [1.0, 1.0, 1.0, 1.0]
