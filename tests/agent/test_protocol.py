"""The Open Inference Protocol v2 over REST, checked with a client nobody here wrote (tritonclient.http)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.agent.conftest import AgentThread

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


@pytest.fixture
def client(agent: AgentThread) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{agent.port}")
    yield c
    c.close()


def sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    if datatype == "BYTES":
        return np.array([[b"edge", b"model"], [b"", b"\xc3\xa9t\xc3\xa9"]], dtype=object)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(datatype.lower())
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal((2, 2)).astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max], [0, 1]], dtype=dtype)


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgemodel-agent"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_lists_versions_inputs_outputs(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("affine")
    assert meta == {
        "name": "affine",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get_model_metadata("affine", "1")["name"] == "affine"
    assert client.is_model_ready("affine")
    assert client.is_model_ready("affine", "2")
    assert not client.is_model_ready("affine", "9")
    config = client.get_model_config("affine")
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["parameters"]["provider"]["string_value"] == "CPUExecutionProvider"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_versions_with_binary_and_json_tensors(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    latest = client.infer("affine", [inp], outputs=[out], request_id="req-7")
    np.testing.assert_allclose(latest.as_numpy("y"), x * 3 + 1)  # version 2 (highest) by default
    assert latest.get_response()["model_version"] == "2"
    assert latest.get_response()["id"] == "req-7"
    first = client.infer("affine", [inp], model_version="1", outputs=[out])
    np.testing.assert_allclose(first.as_numpy("y"), x * 2 + 1)
    assert first.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, outputs, expected = [], [], {}
    for dt in DATATYPES:
        data = sample(dt)
        if dt == "BYTES" and not binary:
            data = np.array([["edge", "model"], ["", "été"]], dtype=object)
        inp = httpclient.InferInput(f"in_{dt}", list(data.shape), dt)
        inp.set_data_from_numpy(data, binary_data=binary)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary))
        expected[dt] = data
    result = client.infer("identity", inputs, outputs=outputs)
    for dt, data in expected.items():
        got = result.as_numpy(f"out_{dt}")
        assert got is not None, dt
        if dt == "BYTES":
            want = [v if isinstance(v, bytes) else v.encode() for v in data.reshape(-1)]
            assert [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)] == want
        else:
            assert got.dtype == data.dtype, dt
            np.testing.assert_array_equal(got, data)


def test_default_outputs_are_binary_and_a_subset_can_be_requested(client: httpclient.InferenceServerClient) -> None:
    data = sample("INT32")
    inputs = []
    for dt in DATATYPES:
        d = sample(dt) if dt != "INT32" else data
        inp = httpclient.InferInput(f"in_{dt}", list(d.shape), dt)
        inp.set_data_from_numpy(d)
        inputs.append(inp)
    everything = client.infer("identity", inputs)  # no outputs: tritonclient asks binary_data_output
    assert len(everything.get_response()["outputs"]) == len(DATATYPES)
    assert all("binary_data_size" in o["parameters"] for o in everything.get_response()["outputs"])
    one = client.infer("identity", inputs, outputs=[httpclient.InferRequestedOutput("out_INT32")])
    assert [o["name"] for o in one.get_response()["outputs"]] == ["out_INT32"]
    np.testing.assert_array_equal(one.as_numpy("out_INT32"), data)


def test_compressed_request_bodies_are_accepted(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("affine", [inp], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("y"), x * 3 + 1)


def test_errors_reach_the_client_as_messages(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="not loaded on this agent") as info:
        client.infer("nope", [inp])
    assert info.value.status() == "404"
    wrong = httpclient.InferInput("x", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
    with pytest.raises(InferenceServerException, match="datatype FP64 does not match the model's FP32"):
        client.infer("affine", [wrong])


def test_plain_json_shapes_follow_the_spec(agent: AgentThread) -> None:
    body = {
        "id": "42",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}],
        "outputs": [{"name": "y"}],
    }
    r = requests.post(f"{agent.url}/v2/models/affine/versions/1/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {
        "model_name": "affine",
        "model_version": "1",
        "id": "42",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 17.0]}],
    }
    index = requests.post(f"{agent.url}/v2/repository/index", timeout=10).json()
    assert {"name": "affine", "version": "1", "state": "READY", "reason": ""} in index
