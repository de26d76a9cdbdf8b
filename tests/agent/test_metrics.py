"""/metrics: the contract's names and labels, edge-fit buckets, and `promtool check metrics` clean."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edge_agent.settings import AgentSettings
from tests.agent.conftest import AgentThread, local
from tests.agent.polling import samples
from tests.conftest import require_tool


@pytest.fixture(scope="module")
def scraped(model_files: dict[str, Path]) -> Iterator[tuple[AgentThread, str]]:
    """An agent after 5 good and 2 bad requests, and its /metrics text."""
    with AgentThread(AgentSettings(port=0, batching=True, max_queue_delay_ms=0.5), local(model_files, "affine=affine1", "slow=slow")) as agent:
        good = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        for _ in range(5):
            assert requests.post(f"{agent.url}/v2/models/affine/infer", json=good, timeout=10).status_code == 200
        bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
        for _ in range(2):
            assert requests.post(f"{agent.url}/v2/models/affine/infer", json=bad, timeout=10).status_code == 400
        assert requests.post(f"{agent.url}/v2/models/ghost/infer", json=good, timeout=10).status_code == 404
        response = requests.get(f"{agent.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        yield agent, response.text



def test_contract_metrics_have_the_documented_labels(scraped: tuple[AgentThread, str]) -> None:
    _, text = scraped
    s = samples(text)
    cpu = "CPUExecutionProvider"
    assert s[("edgemodel_requests_total", (("code", "200"), ("model", "affine"), ("namespace", ""), ("provider", cpu), ("version", "1")))] == 5
    assert s[("edgemodel_requests_total", (("code", "400"), ("model", "affine"), ("namespace", ""), ("provider", cpu), ("version", "1")))] == 2
    assert s[("edgemodel_requests_total", (("code", "404"), ("model", ""), ("namespace", ""), ("provider", ""), ("version", "")))] == 1
    assert s[("edgemodel_request_duration_seconds_count", (("model", "affine"), ("namespace", ""), ("provider", cpu), ("version", "1")))] == 5
    assert s[("edgemodel_inference_duration_seconds_count", (("model", "affine"), ("namespace", ""), ("provider", cpu), ("version", "1")))] == 5
    assert s[("edgemodel_queue_wait_seconds_count", (("model", "affine"), ("namespace", ""), ("version", "1")))] == 5
    assert s[("edgemodel_batch_size_count", (("model", "affine"), ("namespace", ""), ("version", "1")))] == 5
    assert s[("edgemodel_model_load_duration_seconds_count", (("model", "affine"), ("namespace", ""), ("version", "1")))] == 1
    assert s[("edgemodel_artifact_download_bytes_total", ())] == 0
    info = [k for k in s if k[0] == "edgemodel_model_info"]
    assert len(info) == 2
    labels = dict(next(k for k in info if ("model", "affine") in k[1])[1])
    assert labels["provider"] == cpu
    assert re.fullmatch(r"[0-9a-f]{64}", labels["sha256"])
    assert labels["version"] == "1"
    assert "# TYPE edgemodel_artifact_download_failures_total counter" in text
    assert "# TYPE edgemodel_model_state gauge" in text


def test_latency_buckets_span_sub_millisecond_to_seconds(scraped: tuple[AgentThread, str]) -> None:
    _, text = scraped
    buckets = {
        float(m) for m in re.findall(r'edgemodel_request_duration_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}', text) if m != "+Inf"
    }
    assert min(buckets) <= 0.0001
    assert max(buckets) >= 5.0
    assert 0.001 in buckets


def test_promtool_check_metrics_is_clean(scraped: tuple[AgentThread, str]) -> None:
    _, text = scraped
    promtool = require_tool("promtool")
    result = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "", "promtool reported problems"


def test_fast_histograms_use_le_buckets_and_export_cumulative_counts() -> None:
    from edge_agent.metrics import AgentMetrics

    metrics = AgentMetrics(process_metrics=False)
    child = metrics.request_duration.labels("", "m", "1", "CPUExecutionProvider")
    for value in (0.001, 0.0011, 20.0):
        child.observe(value)
    s = samples(metrics.exposition().decode())
    labels = (("model", "m"), ("namespace", ""), ("provider", "CPUExecutionProvider"), ("version", "1"))

    def bucket(le: str) -> float:
        return s[("edgemodel_request_duration_seconds_bucket", tuple(sorted((*labels, ("le", le)))))]

    assert (bucket("0.0005"), bucket("0.001"), bucket("0.0025"), bucket("10.0"), bucket("+Inf")) == (0, 1, 2, 2, 3)
    assert s[("edgemodel_request_duration_seconds_count", labels)] == 3
    assert abs(s[("edgemodel_request_duration_seconds_sum", labels)] - 20.0021) < 1e-9
