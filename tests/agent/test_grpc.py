"""The Open Inference Protocol over gRPC (issue 19), through tritonclient.grpc and its own generated stubs.

The same agent serves REST and gRPC from one data plane: inference with raw and typed contents,
metadata, readiness, the bearer token in metadata, TLS, and hostile requests answered with
INVALID_ARGUMENT / NOT_FOUND / UNAUTHENTICATED / RESOURCE_EXHAUSTED (never INTERNAL) while the
server stays up.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edge_agent.codec import DecodeLimits
from edge_agent.errors import InvalidInput
from edge_agent.grpc_codec import decode_infer_request
from edge_agent.grpc_proto import predict_v2_pb2 as pb
from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings
from edgemodel.errors import UserError
from tests.agent.conftest import AgentThread, local
from tests.agent.test_auth_tls import self_signed

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    """REST and gRPC on free ports, a token, and small limits so each limit is reached with small requests."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    settings = AgentSettings(
        port=0, grpc_port=0, token_file=token_file, max_body_bytes=64 * 1024, max_elements=1000
    )
    models = local(
        model_files,
        "affine:1=affine1",
        "affine:2=affine2",
        "identity=identity",
        "gather=gather",
        "fixed=fixed",
    )
    with AgentThread(settings, models) as running:
        yield running


@pytest.fixture
def client(served: AgentThread) -> Iterator[grpcclient.InferenceServerClient]:
    assert served.server is not None
    c = grpcclient.InferenceServerClient(served.server.grpc_target)
    yield c
    c.close()


@pytest.fixture
def stub(served: AgentThread) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's own generated stub, for requests its high-level client never sends (typed contents, bad ones)."""
    assert served.server is not None
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def affine_input(rows: int = 1) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("x", [rows, 4], "FP32")
    inp.set_data_from_numpy(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    return inp


# -- inference -------------------------------------------------------------------------------
def test_infer_with_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer(
        "affine", [affine_input(3)], request_id="r-1", headers=AUTH
    )  # the highest version: 2
    np.testing.assert_allclose(result.as_numpy("y"), np.arange(12, dtype=np.float32).reshape(3, 4) * 3 + 1)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("affine", "2", "r-1")
    version1 = client.infer("affine", [affine_input()], model_version="1", headers=AUTH)
    np.testing.assert_allclose(version1.as_numpy("y"), np.arange(4, dtype=np.float32).reshape(1, 4) * 2 + 1)
    assert version1.get_response().model_version == "1"


def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient) -> None:
    arrays: dict[str, np.ndarray] = {
        "BOOL": np.array([[True, False]]),
        "UINT8": np.array([[0, 255]], np.uint8), "UINT16": np.array([[0, 65535]], np.uint16),
        "UINT32": np.array([[0, 2**32 - 1]], np.uint32), "UINT64": np.array([[0, 2**64 - 1]], np.uint64),
        "INT8": np.array([[-128, 127]], np.int8), "INT16": np.array([[-1, 2]], np.int16),
        "INT32": np.array([[-(2**31), 5]], np.int32), "INT64": np.array([[-(2**63), 7]], np.int64),
        "FP16": np.array([[0.5, -2]], np.float16), "FP32": np.array([[1.5, -3]], np.float32),
        "FP64": np.array([[2.25, 1e300]], np.float64),
        "BYTES": np.array([["héllo".encode(), b""]], dtype=object),
    }  # fmt: skip
    inputs = []
    for datatype, arr in arrays.items():
        inp = grpcclient.InferInput(f"in_{datatype}", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    outputs = [grpcclient.InferRequestedOutput("out_INT8"), grpcclient.InferRequestedOutput("out_BYTES"),
               *(grpcclient.InferRequestedOutput(f"out_{d}") for d in arrays if d not in ("INT8", "BYTES"))]  # fmt: skip
    result = client.infer("identity", inputs, outputs=outputs, headers=AUTH)
    assert [o.name for o in result.get_response().outputs][:2] == ["out_INT8", "out_BYTES"]
    for datatype, arr in arrays.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got is not None
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


def typed_request(**contents: Any) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.CopyFrom(service_pb2.InferTensorContents(**(contents or {"fp32_contents": [1, 2, 3, 4]})))
    return service_pb2.ModelInferRequest(model_name="affine", inputs=[tensor])


def test_infer_with_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(typed_request(), metadata=tuple(AUTH.items()))
    assert response.outputs[0].name == "y"
    assert list(response.outputs[0].shape) == [1, 4]
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [4.0, 7.0, 10.0, 13.0]


def test_typed_contents_of_every_field_decode_exactly() -> None:
    """tritonclient's message, parsed by the agent's codec: each datatype from its own typed field."""
    fields = {
        "BOOL": ("bool_contents", [True, False], np.bool_), "INT8": ("int_contents", [-128, 127], np.int8),
        "INT16": ("int_contents", [-5, 6], np.int16), "INT32": ("int_contents", [-(2**31), 6], np.int32),
        "INT64": ("int64_contents", [-(2**40), 1], np.int64), "UINT8": ("uint_contents", [0, 255], np.uint8),
        "UINT16": ("uint_contents", [0, 65535], np.uint16), "UINT32": ("uint_contents", [2**32 - 1, 1], np.uint32),
        "UINT64": ("uint64_contents", [2**64 - 1, 0], np.uint64), "FP32": ("fp32_contents", [0.5, -1.5], np.float32),
        "FP64": ("fp64_contents", [0.25, -1e-300], np.float64),
    }  # fmt: skip
    request = service_pb2.ModelInferRequest(model_name="identity")
    for datatype, (field, values, _) in fields.items():
        getattr(
            request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, 2]).contents, field
        ).extend(values)
    request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(
        [b"ab", "ü".encode()]
    )
    decoded = decode_infer_request(
        pb.ModelInferRequest.FromString(request.SerializeToString()), DecodeLimits()
    )
    by_name = {t.name: t.data for t in decoded.inputs}
    for datatype, (_, values, dtype) in fields.items():
        arr = by_name[f"in_{datatype}"]
        assert arr.dtype == np.dtype(dtype), datatype
        assert arr.shape == (1, 2)
        assert arr.ravel().tolist() == values
    assert by_name["in_BYTES"].tolist() == [["ab"], ["ü"]]
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(InvalidInput, match="FP16 has no typed contents field; send it in raw_input_contents"):
        decode_infer_request(pb.ModelInferRequest.FromString(request.SerializeToString()), DecodeLimits())


def test_the_protocol_definition_matches_tritonclients() -> None:
    """Every message, field (number, type) and method of the agent's proto is Triton's too: wire compatible."""
    ours, theirs = pb.DESCRIPTOR, service_pb2.DESCRIPTOR
    assert ours.package == theirs.package == "inference"

    def fields(message: Any) -> dict[str, tuple[int, int, str]]:
        return {
            f.name: (f.number, f.type, f.message_type.full_name if f.message_type else "")
            for f in message.fields
        }

    def walk(message: Any) -> Iterator[Any]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    checked = 0
    for top in ours.message_types_by_name.values():
        for message in walk(top):
            triton = fields(theirs.pool.FindMessageTypeByName(message.full_name))
            for name, spec in fields(message).items():  # Triton adds a few (InferParameter.double_param...)
                assert triton.get(name) == spec, (message.full_name, name)
            checked += 1
    assert checked >= 20
    service, triton = (
        ours.services_by_name["GRPCInferenceService"],
        theirs.services_by_name["GRPCInferenceService"],
    )
    for method in service.methods:
        other = triton.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


# -- health and metadata ---------------------------------------------------------------------
def test_health_readiness_and_metadata(client: grpcclient.InferenceServerClient, served: AgentThread) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("affine", headers=AUTH)
    assert client.is_model_ready("affine", "2", headers=AUTH)
    server = client.get_server_metadata(headers=AUTH, as_json=True)
    assert server["name"] == "edgemodel-agent"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("affine", headers=AUTH, as_json=True)
    assert meta["name"] == "affine"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "4"]}]
    rest = requests.get(
        f"{served.url}/v2/models/affine", headers={"Authorization": AUTH["authorization"]}, timeout=10
    ).json()
    assert rest["inputs"][0]["shape"] == [-1, 4]  # the same model, described the same way on both protocols


def test_metrics_count_grpc_requests(client: grpcclient.InferenceServerClient, served: AgentThread) -> None:
    def count(text: str, code: str) -> float:
        prefix = f'edgemodel_requests_total{{code="{code}",model="fixed",namespace="",provider="CPUExecutionProvider",version="1"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = requests.get(f"{served.url}/metrics", timeout=10).text
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 3), np.float32))
    client.infer("fixed", [inp], headers=AUTH)
    bad = grpcclient.InferInput("x", [3, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((3, 3), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("fixed", [bad], headers=AUTH)
    after = requests.get(f"{served.url}/metrics", timeout=10).text
    assert count(after, "200") == count(before, "200") + 1
    assert count(after, "400") == count(before, "400") + 1


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}],
                         ids=["none", "wrong", "no-scheme"])  # fmt: skip
def test_protected_rpcs_need_the_token(
    client: grpcclient.InferenceServerClient, headers: dict[str, str] | None
) -> None:
    calls = [
        lambda: client.infer("affine", [affine_input()], headers=headers),
        lambda: client.get_model_metadata("affine", headers=headers),
        lambda: client.get_server_metadata(headers=headers),
        lambda: client.is_model_ready("affine", headers=headers),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in str(raised.value.message())
    assert client.is_server_live()  # probes stay open, as on REST
    assert client.is_server_ready()


def test_the_bearer_scheme_is_case_insensitive(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("affine", [affine_input()], headers={"authorization": f"bearer {TOKEN}"})
    assert result.as_numpy("y") is not None


def test_grpc_over_tls_with_the_https_certificate(model_files: dict[str, Path], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = AgentSettings(port=0, grpc_port=0, tls_cert=cert, tls_key=key)
    with AgentThread(settings, local(model_files, "affine=affine1")) as agent:
        assert agent.server is not None
        secure = grpcclient.InferenceServerClient(
            agent.server.grpc_target, ssl=True, root_certificates=str(cert)
        )
        try:
            np.testing.assert_allclose(secure.infer("affine", [affine_input()]).as_numpy("y"), [[1, 3, 5, 7]])
        finally:
            secure.close()
        plain = grpcclient.InferenceServerClient(agent.server.grpc_target)
        try:
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=5)
        finally:
            plain.close()


def test_without_grpc_port_there_is_no_grpc_server(model_files: dict[str, Path]) -> None:
    with AgentThread(AgentSettings(port=0), local(model_files, "affine=affine1")) as agent:
        assert agent.server is not None
        assert agent.server.grpc_port is None
        assert agent.server.grpc_target == ""


# -- bad and hostile input -------------------------------------------------------------------
def raw_request(model: str = "affine", **tensor: Any) -> service_pb2.ModelInferRequest:
    spec = {"name": "x", "datatype": "FP32", "shape": [1, 4], **tensor}
    raw = spec.pop("raw", np.arange(4, dtype=np.float32).tobytes())
    request = service_pb2.ModelInferRequest(
        model_name=model, inputs=[service_pb2.ModelInferRequest.InferInputTensor(**spec)]
    )
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def with_typed(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    return request


def utf8_bytes_request(raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend(
        [raw, b"ok"]
    )
    return request


OK = grpc.StatusCode.OK
INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
HOSTILE: list[tuple[str, service_pb2.ModelInferRequest, grpc.StatusCode, str]] = [
    ("unknown model", raw_request("nope"), NOT_FOUND, "model 'nope' is not loaded"),
    ("unknown version", service_pb2.ModelInferRequest(model_name="affine", model_version="7"), NOT_FOUND, "no version '7'"),
    ("no inputs", service_pb2.ModelInferRequest(model_name="affine"), INVALID, "inputs must hold at least one tensor"),
    ("empty name", raw_request(name=""), INVALID, "name must be a non-empty string"),
    ("wrong input name", raw_request(name="z"), INVALID, "'z' is not an input of model 'affine'"),
    ("unknown datatype", raw_request(datatype="FP8"), INVALID, "datatype 'FP8' is not one of"),
    ("wrong datatype", raw_request(datatype="INT32"), INVALID, "datatype INT32 does not match the model's FP32"),
    ("wrong shape", raw_request(shape=[4, 1]), INVALID, "shape [4, 1] does not match the model's [-1, 4]"),
    ("negative dimension", raw_request(shape=[-1, 4]), INVALID, "non-negative sizes"),
    ("33 dimensions", raw_request(shape=[1] * 33), INVALID, "at most 32 are supported"),
    ("raw too short", raw_request(raw=b"\0" * 12), INVALID, "needs 16 bytes"),
    ("raw too long", raw_request(raw=b"\0" * 20), INVALID, "needs 16 bytes"),
    ("raw count mismatch", raw_request(raw=None), INVALID, "needs 4 elements, contents.fp32_contents has 0"),
    ("raw and typed", with_typed(raw_request()), INVALID, "not both"),
    ("typed in the wrong field", typed_request(int_contents=[1, 2, 3, 4]), INVALID, "takes its values in contents.fp32_contents"),
    ("typed count", typed_request(fp32_contents=[1, 2, 3]), INVALID, "needs 4 elements, contents.fp32_contents has 3"),
    ("NaN", raw_request(raw=np.array([np.nan, 1, 2, 3], np.float32).tobytes()), INVALID, "NaN or infinite"),
    ("claim beyond the element limit", raw_request(shape=[1_000_000_000, 4]), EXHAUSTED, "exceed the agent's limit of 1000"),
    ("huge BYTES claim", raw_request("identity", name="in_BYTES", datatype="BYTES", shape=[100_000_000, 2], raw=b"\1\0\0\0a"),
     EXHAUSTED, "exceed the agent's limit"),
    ("BYTES length beyond the data", raw_request("identity", name="in_BYTES", datatype="BYTES", shape=[1, 2], raw=b"\xff\0\0\0a" * 2),
     INVALID, "BYTES element 0 claims 255 bytes"),
    ("BYTES not UTF-8", utf8_bytes_request(b"\xff\xfe"), INVALID, "not UTF-8"),
    ("value the model rejects", raw_request("gather", name="idx", datatype="INT64", shape=[1, 1],
                                            raw=np.array([99], np.int64).tobytes()), INVALID, "the model rejected the input"),
    ("missing input", raw_request("identity", name="in_INT32", datatype="INT32", shape=[1, 2], raw=b"\0" * 8), INVALID,
     "also needs input(s)"),
    ("message beyond --max-body-bytes", raw_request(shape=[20_000, 4], raw=b"\0" * 320_000), EXHAUSTED, "larger than max"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "code", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_bad_requests_get_the_right_status_naming_the_problem(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    request_: service_pb2.ModelInferRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_, metadata=tuple(AUTH.items()), timeout=30)
    assert raised.value.code() == code, raised.value.details()
    assert message in str(raised.value.details())
    response = stub.ModelInfer(raw_request(), metadata=tuple(AUTH.items()), timeout=30)  # still serving
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [1, 4, 7, 10]


def test_int_contents_out_of_the_datatype_range(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="in_INT8", datatype="INT8", shape=[1, 2]).contents.int_contents.extend([1, 300])
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, metadata=tuple(AUTH.items()), timeout=30)
    assert raised.value.code() == INVALID
    assert "outside the INT8 range [-128, 127]" in str(raised.value.details())


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelReady"])
def test_bytes_that_are_no_message_are_invalid_argument(served: AgentThread, method: str) -> None:
    """A body that does not parse as the method's message: INVALID_ARGUMENT naming it, and the server stays up."""
    assert served.server is not None
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}"
        )
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff\xff\x0f garbage", metadata=tuple(AUTH.items()), timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"not a valid inference.{method}Request message" in str(raised.value.details())
        unknown: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig"
        )
        with pytest.raises(grpc.RpcError) as raised:
            unknown(b"", timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert requests.get(f"{served.url}/v2/health/live", timeout=10).status_code == 200


def test_the_generated_modules_are_up_to_date() -> None:
    """edge_agent/grpc_proto's modules are what `make grpc` makes from predict_v2.proto today."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "generate_grpc.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


async def test_a_grpc_port_in_use_is_a_user_error_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = AgentServer(AgentSettings(port=0, grpc_port=taken.getsockname()[1]))
        try:
            with pytest.raises(UserError, match="--grpc-port"):
                await server.start()
        finally:
            await server.stop()
