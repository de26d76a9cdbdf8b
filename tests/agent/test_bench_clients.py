"""The benchmark's load generators (bench.agent, issue 19): their fastest clients count real answers only.

The REST client is a minimal HTTP/1.1 client and the gRPC one sends pre-serialized bytes: both must
count a 200 / OK that answers the request as a success and everything else (404, NOT_FOUND,
INVALID_ARGUMENT, a refused connection) as an error, or the latency targets would be measured on errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.agent import floor
from bench.agent.grpc_loadgen import build_request
from bench.agent.grpc_loadgen import run_load as grpc_load
from bench.agent.loadgen import build_request as rest_request
from bench.agent.loadgen import run_load_raw
from edge_agent.settings import AgentSettings
from edgemodel_dev.net import free_port
from tests.agent.conftest import AgentThread, local


@pytest.fixture(scope="module")
def served(model_files: dict[str, Path]) -> Iterator[AgentThread]:
    with AgentThread(AgentSettings(port=0, grpc_port=0), local(model_files, "affine=affine1")) as running:
        yield running


@pytest.mark.parametrize("binary", [False, True])
def test_the_raw_rest_client_counts_answers_and_errors(served: AgentThread, binary: bool) -> None:
    body, headers = rest_request("x", (1, 4), binary)
    ok = asyncio.run(run_load_raw(f"{served.url}/v2/models/affine/infer", body, headers, 2, 0.3, warmup_s=0.1))
    assert ok.requests > 0
    assert ok.errors == 0
    assert ok.throughput > 0
    missing = asyncio.run(run_load_raw(f"{served.url}/v2/models/nope/infer", body, headers, 1, 0.2, warmup_s=0))
    assert missing.requests == 0
    assert missing.errors > 0


def test_the_raw_rest_client_counts_a_refused_connection_as_an_error() -> None:
    body, headers = rest_request("x", (1, 4), False)
    url = f"http://127.0.0.1:{free_port()}/v2/models/affine/infer"
    with pytest.raises(ConnectionRefusedError):  # nothing listens: the first connection fails loudly, not silently
        asyncio.run(run_load_raw(url, body, headers, 1, 0.1, warmup_s=0))


@pytest.mark.parametrize("client", ["sync", "aio"])
def test_the_grpc_clients_count_answers_and_errors(served: AgentThread, client: str) -> None:
    assert served.server is not None
    target = served.server.grpc_target
    ok = grpc_load(target, build_request("affine", "x", (1, 4)), 2, 0.3, warmup_s=0.1, client=client)
    assert ok.requests > 0
    assert ok.errors == 0
    bad = grpc_load(target, build_request("affine", "x", (1, 5)), 1, 0.2, warmup_s=0, client=client)
    assert bad.requests == 0
    assert bad.errors > 0


def test_the_floors_answer_both_clients() -> None:
    body, headers = rest_request("x", (1, 4), False)
    with floor.bare_server("http") as http, floor.bare_server("aio") as grpc_target:
        rest = asyncio.run(run_load_raw(f"http://{http}/v2/models/m/infer", body, headers, 2, 0.2, warmup_s=0))
        grpc = grpc_load(grpc_target, build_request("m", "x", (1, 4)), 2, 0.2, warmup_s=0)
    assert rest.requests > 0
    assert rest.errors == 0
    assert grpc.requests > 0
    assert grpc.errors == 0
