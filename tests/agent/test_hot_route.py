"""The REST hot path (issue 19): inference requests skip the router, with the same answers as through it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from edge_agent import hotpath
from edge_agent.settings import AgentSettings
from tests.agent.conftest import AgentThread, local

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v2/models/affine/infer", {}, [4.0, 7.0, 10.0, 13.0]),  # the default version: 2 (scale 3)
        ("/v2/models/affine/versions/1/infer", {}, [3.0, 5.0, 7.0, 9.0]),
        ("/v2/models/affine/versions/2/infer", {}, [4.0, 7.0, 10.0, 13.0]),
        # with Expect: 100-continue the application (and its router) answers, the same way
        ("/v2/models/affine/versions/1/infer", {"Expect": "100-continue"}, [3.0, 5.0, 7.0, 9.0]),
    ],
)
def test_inference_paths_answer_as_through_the_router(
    agent: AgentThread, path: str, headers: dict[str, str], expected: list[float]
) -> None:
    r = requests.post(f"{agent.url}{path}", json=BODY, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == expected


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        ("POST", "/v2/models//infer", 404, "no such endpoint"),
        ("POST", "/v2/models/affine/versions//infer", 404, "no such endpoint"),
        ("POST", "/v2/models/a/b/infer", 404, "no such endpoint"),
        ("POST", "/v2/models/nope/infer", 404, "model 'nope' is not loaded"),
        ("POST", "/v2/models/affine/versions/9/infer", 404, "no version '9'"),
        ("GET", "/v2/models/affine/infer", 405, "method GET is not allowed"),
        ("PUT", "/v2/models/affine/infer", 405, "method PUT is not allowed"),
    ],
)
def test_other_requests_near_the_hot_path_get_the_routers_answers(
    agent: AgentThread, method: str, path: str, status: int, fragment: str
) -> None:
    r = requests.request(method, f"{agent.url}{path}", json=BODY, timeout=10)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_a_body_split_across_packets_is_read_whole(agent: AgentThread) -> None:
    """The fast read takes what already arrived; the rest of a body sent in pieces is still awaited."""
    body = json.dumps(BODY).encode()
    head = (f"POST /v2/models/affine/versions/1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.2)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(rest)["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


# -- the HTTP/1.1 hot path (edge_agent.hotpath): plain requests parsed from the connection's bytes ---------------

def request_bytes(path: str, body: bytes, *extra: str, version: str = "HTTP/1.1") -> bytes:
    head = "\r\n".join([f"POST {path} {version}", "Host: x", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra])
    return head.encode() + b"\r\n\r\n" + body


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, dict[str, str], bytes]]:
    """``count`` HTTP answers (status line, headers, body) read from a keep-alive connection."""
    buf = b""
    answers = []
    while len(answers) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            status, *lines = buf[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            size = int(headers["content-length"])
            if len(buf) >= end + 4 + size:
                answers.append((status.encode(), headers, buf[end + 4 : end + 4 + size]))
                buf = buf[end + 4 + size :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(answers)} answer(s)"
        buf += chunk
    return answers


def test_pipelined_requests_are_answered_in_order_on_one_connection(agent: AgentThread) -> None:
    body = json.dumps(BODY).encode()
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(request_bytes("/v2/models/affine/versions/1/infer", body)
                     + request_bytes("/v2/models/affine/versions/2/infer", body) + request_bytes("/v2/models/nope/infer", body))  # fmt: skip
        first, second, missing = read_answers(sock, 3)
        # after the hot requests, the connection is handed to aiohttp, which answers the rest
        sock.sendall(health + request_bytes("/v2/models/affine/versions/1/infer", body))
        live, after = read_answers(sock, 2)
    assert [a[0].split(b" ")[1] for a in (first, second, missing, live, after)] == [b"200", b"200", b"404", b"200", b"200"]
    assert json.loads(first[2])["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
    assert json.loads(second[2])["outputs"][0]["data"] == [4.0, 7.0, 10.0, 13.0]
    assert "model 'nope' is not loaded" in json.loads(missing[2])["error"]
    assert json.loads(after[2])["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]
    for _, headers, _ in (first, missing):
        assert headers["content-type"] == "application/json"
        assert "date" in headers
        assert headers["server"].startswith("Python/")


def test_connection_close_is_honoured(agent: AgentThread) -> None:
    body = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(request_bytes("/v2/models/affine/versions/1/infer", body, "Connection: close"))
        ((status, headers, payload),) = read_answers(sock, 1)
        assert sock.recv(65536) == b""  # closed by the agent after the answer
    assert status.startswith(b"HTTP/1.1 200")
    assert headers["connection"] == "close"
    assert json.loads(payload)["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def test_binary_extension_answers_through_the_hot_path(agent: AgentThread) -> None:
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
                       "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    body = head + np.array([1, 2, 3, 4], dtype=np.float32).tobytes()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(request_bytes("/v2/models/affine/versions/1/infer", body, f"Inference-Header-Content-Length: {len(head)}"))
        ((status, headers, payload),) = read_answers(sock, 1)
    assert status.startswith(b"HTTP/1.1 200")
    assert headers["content-type"] == "application/octet-stream"
    json_length = int(headers["inference-header-content-length"])
    assert np.frombuffer(payload[json_length:], dtype=np.float32).tolist() == [3.0, 5.0, 7.0, 9.0]


def test_a_stalled_body_on_the_hot_path_gets_the_body_timeout(model_files: dict[str, Path]) -> None:
    body = json.dumps(BODY).encode()
    with AgentThread(AgentSettings(port=0, body_read_timeout_s=0.3), local(model_files, "affine=affine1")) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(request_bytes("/v2/models/affine/infer", body)[:-5])
            started = time.monotonic()
            ((status, _, payload),) = read_answers(sock, 1)
        assert status.startswith(b"HTTP/1.1 408"), payload
        assert "stalled" in json.loads(payload)["error"]
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (request_bytes("/v2/models/m/infer", b"{}"), ("m", None, 2, True)),
        (request_bytes("/v2/models/m/versions/3/infer", b"{}", "Connection: close", "Authorization: Bearer t"), ("m", "3", 2, False)),
        (request_bytes("/v2/models/m/infer", b"{}") + b"POST /v2/next", ("m", None, 2, True)),  # a pipelined next request
    ],
)
def test_the_hot_parser_takes_plain_requests(raw: bytes, expected: tuple[str, str | None, int, bool]) -> None:
    request = hotpath.parse(raw)
    assert isinstance(request, hotpath.HotRequest)
    assert (request.name, request.version, len(request.body), request.keep_alive) == expected
    assert request.size == raw.index(b"{}") + 2


@pytest.mark.parametrize(
    "raw",
    [
        request_bytes("/v2/models/m/infer?x=1", b"{}"),  # a query
        request_bytes("/v2/models/m%20x/infer", b"{}"),  # escapes
        request_bytes("/v2/models/./m/infer", b"{}"),  # dot segments
        request_bytes("/v2/models//infer", b"{}"),  # no name: the router's 404
        request_bytes("/v2/models/m/infer", b"{}", version="HTTP/1.0"),
        request_bytes("/v2/models/m/infer", b"{}", "Expect: 100-continue"),
        request_bytes("/v2/models/m/infer", b"{}", "Transfer-Encoding: chunked"),
        request_bytes("/v2/models/m/infer", b"{}", "Content-Length: 2"),  # twice
        request_bytes("/v2/models/m/infer", b"{}", " folded"),
        request_bytes("/v2/models/m/infer", b"{}", "Bad Name: x"),
        request_bytes("/v2/models/m/infer", b"{}", "X-Ctl: a\x01b"),
        request_bytes("/v2/models/m/infer", b"{}", "Connection: upgrade"),
        request_bytes("/v2/models/m/infer", b"x" * (hotpath.MAX_BODY + 1)),
        b"GET /v2/health/live HTTP/1.1\r\n\r\n",
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n\r\n",  # no Content-Length
        b"POST /v2/models/m/infer HTTP/1.1\r\n" + b"X: y\r\n" * 2000,  # a head longer than MAX_HEAD
    ],
)
def test_anything_else_goes_to_aiohttp(raw: bytes) -> None:
    assert hotpath.parse(raw) is hotpath._HANDOVER


@pytest.mark.parametrize("raw", [b"PO", b"POST /v2/models/m/in", request_bytes("/v2/models/m/infer", b"{}")[:-1]])
def test_a_partial_hot_request_waits_for_the_rest(raw: bytes) -> None:
    assert hotpath.parse(raw) is hotpath._INCOMPLETE


async def test_run_eagerly_answers_at_once_and_continues_a_waiting_coroutine_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    steps: list[str] = []

    async def instant() -> None:
        steps.append("instant")

    gate: asyncio.Future[str] = loop.create_future()

    async def waiting() -> None:
        steps.append("before")
        steps.append(await gate)
        await asyncio.sleep(0)  # and any later waits
        steps.append(f"in a task: {asyncio.current_task() is not None}")

    hotpath.run_eagerly(instant(), loop)
    assert steps == ["instant"]  # done within the call: no task, no loop iteration
    hotpath.run_eagerly(waiting(), loop)
    assert steps == ["instant", "before"]
    gate.set_result("resumed")
    for _ in range(5):
        await asyncio.sleep(0)
    assert steps == ["instant", "before", "resumed", "in a task: True"]

    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    hotpath.run_eagerly(forever(), loop)
    await asyncio.sleep(0)
    (task,) = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "_Resumed.wait"]
    task.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)
