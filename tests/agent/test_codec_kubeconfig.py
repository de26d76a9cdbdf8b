"""Units: request/response codec edge cases and kubeconfig parsing."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_agent.codec import decode_request, encode_response
from edge_agent.errors import InvalidInput
from edgemodel.errors import UserError
from edgemodel.kube import load_kubeconfig, resource_path


def test_nested_and_flat_json_data_decode_to_the_same_array() -> None:
    flat = decode_request(json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}]}).encode())
    nested = decode_request(json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}).encode())
    np.testing.assert_array_equal(flat.inputs[0].data, nested.inputs[0].data)
    assert flat.inputs[0].data.dtype == np.int64
    assert flat.inputs[0].data.shape == (2, 2)


def test_uint64_values_above_the_int64_range_survive_json() -> None:
    big = 2**64 - 1
    req = decode_request(json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "UINT64", "data": [0, big]}]}).encode())
    assert req.inputs[0].data.tolist() == [0, big]
    with pytest.raises(InvalidInput, match="outside the INT64 range"):
        decode_request(json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [big]}]}).encode())


def test_binary_inputs_at_unaligned_offsets_and_bytes_elements() -> None:
    raw = np.arange(3, dtype=np.float32).tobytes()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", "é".encode()))
    head = json.dumps({"inputs": [
        {"name": "b", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}},
        {"name": "f", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        {"name": "s", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(strings)}},
    ]}).encode()  # fmt: skip
    req = decode_request(head + b"\x01" + raw + strings, len(head))
    assert req.inputs[0].data.tolist() == [True]
    assert req.inputs[1].data.tolist() == [0.0, 1.0, 2.0]
    assert req.inputs[1].data.flags.aligned
    assert req.inputs[2].data.tolist() == ["ab", "", "é"]


def test_response_encoding_json_and_binary() -> None:
    y = np.array([[1.5, 2.0]], dtype=np.float32)
    s = np.array(["a", "bc"], dtype=object)
    body, length = encode_response("m", "3", "id-1", [("y", y, False), ("s", s, False)])
    assert length is None
    assert json.loads(body) == {"model_name": "m", "model_version": "3", "id": "id-1", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]},
        {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}]}  # fmt: skip
    body, length = encode_response("m", "3", None, [("y", y, True), ("s", s, True)])
    assert length is not None
    head = json.loads(body[:length])
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [8, 4 + 1 + 4 + 2]
    assert body[length : length + 8] == y.tobytes()
    assert body[length + 8 :] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"


def kubeconfig(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    import yaml

    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "edge",
        "contexts": [{"name": "edge", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }))  # fmt: skip
    return path


def test_kubeconfig_with_token_and_inline_ca(tmp_path: Path) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    creds = load_kubeconfig(kubeconfig(tmp_path, {"token": "abc"},
                                       {"server": "https://127.0.0.1:6443/", "certificate-authority-data": base64.b64encode(ca).decode()}),
                            scratch=tmp_path)  # fmt: skip
    assert creds.server == "https://127.0.0.1:6443"
    assert creds.token == "abc"
    assert creds.ca_data == ca


def test_kubeconfig_with_token_file_and_client_certificate_data(tmp_path: Path) -> None:
    creds = load_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "tok", "client-certificate-data": base64.b64encode(b"CERT").decode(),
                                                  "client-key-data": base64.b64encode(b"KEY").decode()},
                                       {"server": "http://127.0.0.1:8001", "insecure-skip-tls-verify": True}),
                            scratch=tmp_path)  # fmt: skip
    assert creds.token_file == tmp_path / "tok"
    assert creds.insecure
    assert creds.client_cert is not None
    assert creds.client_cert.read_bytes() == b"CERT"
    assert creds.client_key is not None
    assert creds.client_key.read_bytes() == b"KEY"
    assert creds.ssl_context() is True  # plain http


def test_kubeconfig_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read it as YAML"):
        load_kubeconfig(tmp_path / "missing")
    path = kubeconfig(tmp_path, {}, {"server": ""})
    with pytest.raises(UserError, match="has no server URL"):
        load_kubeconfig(path, scratch=tmp_path)
    with pytest.raises(UserError, match="no context named 'other'"):
        load_kubeconfig(path, context="other", scratch=tmp_path)


def test_resource_paths() -> None:
    assert resource_path("", "v1", "nodes", "n1") == "/api/v1/nodes/n1"
    assert resource_path("edgemodel.io", "v1alpha1", "edgeagents", "n1", "status") == "/apis/edgemodel.io/v1alpha1/edgeagents/n1/status"
