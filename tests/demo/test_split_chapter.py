"""The demo's split chapter reads per-stage numbers from real agent metric endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from edgemodel.split.metrics import SplitMetrics
from edgemodel.split.remote import SplitOutcome
from edgemodel_dev.demo.split_chapter import EXAMPLE, SPLIT_MODEL, read_split_metrics, split_manifest
from edgemodel_dev.net import free_port


@pytest.fixture
def two_agents() -> Iterator[tuple[list[str], list[SplitMetrics]]]:
    """Two /metrics endpoints, each with the split metrics the agent registers."""
    endpoints, metrics, servers = [], [], []
    for _ in range(2):
        registry = CollectorRegistry()
        metrics.append(SplitMetrics(registry))
        port = free_port()
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        endpoints.append(f"http://127.0.0.1:{port}")
    yield endpoints, metrics
    for server, thread in servers:
        server.shutdown()
        thread.join(5)


def test_readings_sum_agents_and_subtract_the_earlier_reading(two_agents: tuple[list[str], list[SplitMetrics]]) -> None:
    endpoints, metrics = two_agents
    split = SplitOutcome({}, "split", head_s=0.001, encode_s=0.0005, transfer_s=0.004, tail_s=0.002,
                         bytes_up=100, bytes_down=40)
    metrics[0].observe("default", SPLIT_MODEL, "1", split)
    metrics[0].observe("default", "another-model", "1", split)  # not counted: another model
    metrics[0].observe("team-b", SPLIT_MODEL, "1", split)  # not counted: the same name in another namespace
    before = read_split_metrics(endpoints, SPLIT_MODEL)
    assert before.requests == {"split": 1.0}

    metrics[0].observe("default", SPLIT_MODEL, "1", split)
    metrics[1].observe("default", SPLIT_MODEL, "1", SplitOutcome({}, "split", head_s=0.003, transfer_s=0.006, tail_s=0.004,
                                                      bytes_up=200, bytes_down=40))
    metrics[1].observe("default", SPLIT_MODEL, "1", SplitOutcome({}, "local", head_s=0.001, local_s=0.002,
                                                      fallback_reason="cloud unreachable"))
    delta = read_split_metrics(endpoints, SPLIT_MODEL).since(before)
    assert delta.requests == {"split": 2.0, "local": 1.0}
    assert delta.bytes_up == 300.0
    assert delta.bytes_up_per_request == 150.0
    assert delta.bytes_down == 80.0
    assert delta.mean_ms("transfer") == pytest.approx(5.0)
    assert delta.mean_ms("tail") == pytest.approx(3.0)
    assert delta.mean_ms("head") == pytest.approx((1 + 3 + 1) / 3)
    assert delta.mean_ms("local") == pytest.approx(2.0)


def test_the_manifest_is_the_example_pointed_at_the_trained_model(tmp_path: Path) -> None:
    doc = split_manifest(tmp_path / "model.pt", tmp_path / "val.npz")
    assert EXAMPLE.name == "digits-split-edgemodel.yaml"
    assert doc["metadata"]["name"] == SPLIT_MODEL
    assert doc["spec"]["source"]["uri"] == (tmp_path / "model.pt").as_uri()
    assert doc["spec"]["validation"]["dataUri"] == (tmp_path / "val.npz").as_uri()
    assert doc["spec"]["split"]["cut"] == "auto"
    assert doc["spec"]["split"]["fallback"] == "local"
