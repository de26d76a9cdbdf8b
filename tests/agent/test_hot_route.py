"""The REST hot path (issue 19): inference requests skip the router, with the same answers as through it."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.agent.conftest import AgentThread

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
