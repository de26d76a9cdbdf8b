"""Secure aggregation over the product's HTTPS grid: Flower's SecAgg+ workflow (SurvivorsOnly) on the server, each
node's ClientApp with secaggplus_mod in a long-lived loop (client threads here), TLS with a throwaway CA."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from edgemodel.api.federated import FederatedTrainingSpec
from edgemodel.federated.grid import HttpGrid
from edgemodel.federated.grid_client import GridConnection, run_grid_client
from edgemodel.federated.grid_http import serve_grid, server_tls
from edgemodel.federated.progress import Progress
from edgemodel.federated.secure import (
    max_weight,
    reconstruction_threshold,
    tolerated_drop_fraction,
    train_securely,
)
from edgemodel.federated.strategy import TrackedStrategy
from edgemodel_dev.net import free_port
from edgemodel_operator.federated_pki import make_server_tls
from tests.federated.test_spec import spec as make_spec

SHAPE = (4, 3)
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_server_tls("grid-test", ["127.0.0.1"]).write_dir(tmp_path_factory.mktemp("tls"))


class _Node(NumPyClient):
    def __init__(self, k: int, per_k: int = 10) -> None:
        self.k = k
        self.samples = per_k * k

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        # Node k sends 0.1 * k everywhere, weighted by per_k * k samples.
        return [np.full_like(p, 0.1 * self.k) for p in parameters], self.samples, {"node": f"edge-{self.k}"}


class _Recording(FedAvg):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values: dict[int, float] = {}

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        assert params is not None
        self.values[server_round] = float(np.mean(parameters_to_ndarrays(params)[0]))
        return params, metrics


def _weighted_mean(ks: list[int]) -> float:
    return sum(0.1 * k * 10 * k for k in ks) / sum(10 * k for k in ks)


def _client(port: int, ca: Path, k: int, per_k: int = 10) -> threading.Thread:
    def fn(_: Context) -> Client:
        return _Node(k, per_k).to_client()

    thread = threading.Thread(
        target=run_grid_client,
        args=(f"127.0.0.1:{port}", ca, f"edge-{k}", fn, 30.0),
        kwargs={"samples": per_k * k},
        daemon=True,
    )
    thread.start()
    return thread


# 10,000 samples per k: node 5 holds 50,000, far above Flower's default max_weight (1,000), where its
# sample-weighted update (x50) would be clipped at +-8 and the sum come out wrong.
@pytest.mark.parametrize("per_k", [10, 10_000])
def test_secagg_over_https_aggregates_the_weighted_mean_and_records_each_round(tls_dir: Path, per_k: int) -> None:
    nodes = [1, 2, 3, 4, 5]
    port = free_port()
    spec = FederatedTrainingSpec.model_validate(
        make_spec(rounds=2, minClients=len(nodes), secureAggregation=True, roundTimeoutSeconds=20, port=port)
    )
    inner = _Recording(
        initial_parameters=ndarrays_to_parameters([np.zeros(SHAPE, dtype=np.float32)]),
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=len(nodes),
        evaluate_fn=lambda rnd, weights, cfg: (0.0, {"accuracy": 0.5}),
    )
    progress = Progress(len(nodes), 2)
    tracked = TrackedStrategy(inner, progress, spec.max_drop_fraction, None)
    clients = [_client(port, tls_dir / "ca.pem", k, per_k) for k in nodes]
    started = time.monotonic()
    train_securely(spec, tracked, "127.0.0.1", server_tls(tls_dir / "tls.crt", tls_dir / "tls.key"))
    assert time.monotonic() - started < 60
    assert sorted(inner.values) == [1, 2]
    for value in inner.values.values():
        assert value == pytest.approx(_weighted_mean(nodes), abs=1e-3)
    records = progress.snapshot()["rounds"]
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert r["aggregated"] is True
        assert r["participating"] == [f"edge-{k}" for k in nodes]
        assert r["dropped"] == []
    for thread in clients:  # told that the run is over: every node loop returns
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_max_weight_covers_the_largest_declared_sample_count() -> None:
    assert max_weight(0) == 1000.0  # nobody declared: Flower's default
    for samples in (1, 2, 3, 150, 1000, 1024, 1025, 50_000):
        weight = max_weight(samples)
        assert samples <= weight < 2 * samples
    grid = HttpGrid()
    grid.register("edge-0", 120)
    grid.register("edge-1", 4000)
    grid.register("edge-1", 30)  # edge-1 restarted with less data: its old process no longer counts
    assert grid.largest_samples() == 120


def _flower_threshold(fraction: float, n: int) -> int:
    """What SecAggPlusWorkflow makes of a float threshold with shares to all ``n`` nodes of a round."""
    return max(2, round(reconstruction_threshold(fraction) * n))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.35, 0.5, 0.7, 0.9])
def test_the_threshold_is_a_strict_majority_of_every_round(fraction: float) -> None:
    for n in range(2, 2000):
        assert _flower_threshold(fraction, n) > n / 2, (fraction, n)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.35, 0.5, 0.7, 0.9])
def test_every_round_within_the_tolerated_dropouts_can_unmask(fraction: float) -> None:
    tolerated = tolerated_drop_fraction(fraction)
    assert tolerated == min(fraction, 0.35)
    for n in range(2, 2000):
        survivors = n - int(tolerated * n + 1e-9)
        assert _flower_threshold(fraction, n) <= max(survivors, 2), (fraction, n)


@pytest.fixture
def served(tls_dir: Path) -> Iterator[tuple[HttpGrid, int]]:
    grid = HttpGrid(heartbeat_window=1.0)
    port = free_port()
    with serve_grid(grid, "127.0.0.1", port, server_tls(tls_dir / "tls.crt", tls_dir / "tls.key"), MAX_BODY, 0.2):
        yield grid, port


def _raw(port: int, ca: Path, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context(cafile=ca))
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_bad_requests_get_4xx_and_the_grid_keeps_going(served: tuple[HttpGrid, int], tls_dir: Path) -> None:
    grid, port = served
    ca = tls_dir / "ca.pem"
    conn = GridConnection(f"127.0.0.1:{port}", ca)
    status, body = conn.post("/v1/register", json.dumps({"node": "edge-0"}).encode())
    assert status == 200
    node_id = json.loads(body)["nodeId"]
    assert list(grid.get_node_ids()) == [node_id]
    # oversized body: refused from its Content-Length, before any of it is read
    big = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context(cafile=ca))
    big.putrequest("POST", "/v1/push")
    big.putheader("Content-Length", str(MAX_BODY + 1))
    big.putheader("X-Node-Id", str(node_id))
    big.endheaders()
    assert big.getresponse().status == 413
    big.close()
    # garbage instead of a Flower message
    assert conn.post("/v1/push", b"\xff\x00garbage" * 10, node_id)[0] == 400
    # unknown node
    assert conn.post("/v1/pull", node_id=node_id + 1)[0] == 404
    assert conn.post("/v1/heartbeat", node_id=node_id + 1)[0] == 404
    # no node id, bad register bodies, unknown endpoint, no Content-Length
    assert conn.post("/v1/pull")[0] == 400
    assert conn.post("/v1/register", b"not json")[0] == 400
    assert conn.post("/v1/register", json.dumps({"node": "../etc"}).encode())[0] == 400
    for samples in (-1, 2**31, "many", True, 1.5):
        assert conn.post("/v1/register", json.dumps({"node": "edge-1", "samples": samples}).encode())[0] == 400
    assert conn.post("/v1/register", b'["edge-1"]')[0] == 400
    assert conn.post("/v1/nope", node_id=node_id)[0] == 404
    assert _raw(port, ca, "/v1/pull", b"", {"X-Node-Id": str(node_id), "Transfer-Encoding": "chunked"})[0] == 411
    # a reply to a message the node was never sent
    from flwr.app import Message, RecordDict
    from flwr.common.serde import message_to_proto

    from edgemodel.federated.grid import GridError

    with pytest.raises(GridError):
        grid.post_reply(node_id, b"")  # an empty protobuf is no message with a reply id
    fake = Message(RecordDict(), reply_to=Message(RecordDict(), dst_node_id=node_id, message_type="train"))
    assert conn.post("/v1/push", message_to_proto(fake).SerializeToString(), node_id)[0] in (400, 409)
    # still serving: a poll answers "nothing yet", a second node registers
    assert conn.post("/v1/pull", node_id=node_id)[0] == 204
    assert GridConnection(f"127.0.0.1:{port}", ca).post("/v1/register", b'{"node": "edge-1"}')[0] == 200
    assert len(list(grid.get_node_ids())) == 2


def test_a_silent_node_leaves_the_grid_and_a_restarted_one_replaces_it(served: tuple[HttpGrid, int]) -> None:
    grid, _ = served
    old = grid.register("edge-0")
    other = grid.register("edge-1")
    new = grid.register("edge-0")  # the node's process restarted
    assert sorted(grid.get_node_ids()) == sorted([other, new])
    assert old not in grid.get_node_ids()
    time.sleep(0.6)
    grid.heartbeat(new)
    time.sleep(0.6)
    assert list(grid.get_node_ids()) == [new]  # edge-1 was silent for more than the 1 s window



def test_a_node_whose_connections_all_close_is_gone_at_once(tls_dir: Path) -> None:
    grid = HttpGrid(heartbeat_window=60.0)  # far longer than the test: only the closed connections can remove it
    port = free_port()
    with serve_grid(grid, "127.0.0.1", port, server_tls(tls_dir / "tls.crt", tls_dir / "tls.key")):
        first, second = (GridConnection(f"127.0.0.1:{port}", tls_dir / "ca.pem") for _ in range(2))
        status, body = first.post("/v1/register", b'{"node": "edge-0"}')
        node_id = json.loads(body)["nodeId"]
        assert first.post("/v1/heartbeat", node_id=node_id)[0] == 204
        assert second.post("/v1/pull", node_id=node_id)[0] == 204
        first.close()  # one connection left: still live
        time.sleep(0.3)
        assert list(grid.get_node_ids()) == [node_id]
        second.close()  # as when the process is killed: the kernel closes its sockets
        deadline = time.monotonic() + 5
        while list(grid.get_node_ids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(grid.get_node_ids()) == []
        assert second.post("/v1/heartbeat", node_id=node_id)[0] == 204  # it comes back when it speaks again
        assert list(grid.get_node_ids()) == [node_id]


def test_registrations_are_bounded_and_stale_nodes_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgemodel.federated.grid as grid_module
    from edgemodel.federated.grid import GridError

    monkeypatch.setattr(grid_module, "MAX_NODES", 3)
    grid = HttpGrid()
    first = grid.register("edge-0")
    grid.register("edge-0")  # replaces the first: forgotten at the next registration
    grid.register("edge-1")
    assert first not in grid._nodes
    grid.register("edge-2")
    with pytest.raises(GridError) as refused:
        grid.register("edge-3")
    assert refused.value.status == 429
    monkeypatch.setattr(grid_module, "FORGET_AFTER", 0.0)  # every silent node is stale now
    time.sleep(0.01)
    grid.register("edge-3")
    assert grid.not_told() == ["edge-3"]
