"""End to end: a real Prometheus (Debian package) scrapes the real operator and real agents; every
dashboard panel query and alert expression is evaluated through Prometheus' HTTP API; the
expositions pass `promtool check metrics`.

- Two agents serve a real ONNX model standalone (``--model NAME=PATH.onnx``) under real traffic, as
  nodes edge-1 and edge-2 (static target labels ``component=agent, node=...``: what the chart's
  monitors add); edge-2 is stopped at the end (an outage).
- The cluster side (tests/helm/cluster_stack.py): the API emulator with the chart's CRDs, one
  operator replica and one cluster-mode agent, each under a token holding exactly the chart's
  ClusterRole rules. An EdgeModel whose source does not exist makes a real conversion Job (run by
  the emulator's kubelet) fail, provoking EdgemodelConversionFailing.

Series no part of this run can produce are listed in NO_SERIES_HERE with the reason; queries made
only of them are checked to be valid PromQL that Prometheus evaluates (docs/observability.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgemodel_dev import polling
from edgemodel_dev.net import free_port
from tests.conftest import ROOT, require_tool
from tests.helm.cluster_stack import ClusterSide, broken_edgemodel
from tests.helm.dashboards import board_queries, concrete

DASHBOARDS = ROOT / "helm" / "dashboards"
ELSEWHERE = {"edgemodel-federated": "tests/federated/test_e2e.py evaluates it on a real FederatedTraining"}
"""Boards whose series this run cannot produce at all, and the test that evaluates them on real data."""
ALERTS = ROOT / "helm" / "alerts" / "edgemodel-alerts.yaml"
SCRAPE = "1s"
#: Series this run cannot produce, and why. A query whose metrics are all here must evaluate; others must return data.
NO_SERIES_HERE = {
    "edgemodel_operator_rollouts_total": "no rollout finishes (the only EdgeModel fails to convert)",
    "edgemodel_operator_analysis_total": "no canary analysis runs without a converted revision",
    "edgemodel_artifact_download_failures_total": "no artifact is assigned, so none is downloaded",
    "edgemodel_model_state": "set for assigned models only, not for --model files; nothing is assigned here",
    "edgemodel_operator_conversion_duration_seconds_bucket": "the only conversion fails (recorded on success)",
    "edgemodel_operator_candidate_latency_seconds": "the only conversion fails before measuring candidates",
    "edgemodel_operator_candidate_speedup": "the only conversion fails before measuring candidates",
    'edgemodel_operator_conversions_total{outcome="succeeded"': "the only conversion fails (on purpose)",
    "edgemodel_split_stage_duration_seconds_bucket": "no split model runs here (tests/split/test_rollout_e2e.py)",
    "edgemodel_split_transfer_bytes_total": "no split model runs here (tests/split/test_rollout_e2e.py)",
    "edgemodel_split_requests_total": "no split model runs here (tests/split/test_rollout_e2e.py)",
    "edgemodel_split_tail_duration_seconds_bucket": "no split model runs here (tests/split/test_rollout_e2e.py)",
    "edgemodel_split_tail_requests_total": "no split model runs here (tests/split/test_rollout_e2e.py)",
}

FORBIDDEN_STATUS = re.compile(r"(?<![\d:.])403(?!\d)")
"""An HTTP 403 in a log line (not the digits of a port such as 127.0.0.1:35403)."""


def selectors_of(expr: str) -> list[str]:
    """Every metric reference with the start of its selector, e.g. 'up{component="agent"'."""
    return [m.group(0) for m in re.finditer(r"\b(edgemodel_[a-z_]+|up)\b(\{[^}]*)?", expr)]


def no_series_expected(expr: str) -> bool:
    refs = selectors_of(expr)
    return bool(refs) and all(any(ref == key or ref.startswith(key) and (key.endswith('"') or ref[len(key)] in "{")
                                  for key in NO_SERIES_HERE) for ref in refs)


def http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Any, what: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> Any:
    """Poll ``check`` (connection errors count as "not yet"), failing with ``log``'s tail; early if ``proc`` exits."""
    return polling.wait_until(what, check, timeout, interval=0.25, tolerate=(OSError,), process=proc,
                              explain=lambda: polling.log_tail(log))


def make_model(path: Path) -> None:
    """A small real classifier: softmax(x @ W + b), float32 [batch, 16] -> [batch, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@dataclass
class Agent:
    node: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    agents: list[Agent]
    prom_url: str
    prom: subprocess.Popen[bytes]
    traffic_start: float
    side: ClusterSide


def start_agent(tmp: Path, node: str, model: Path, extra: list[str]) -> Agent:
    port = free_port()
    log = tmp / f"agent-{node}.log"
    cmd = [sys.executable, "-m", "edgemodel.cli", "agent", "--host", "127.0.0.1", "--port", str(port),
           "--model", f"digits:2={model}", "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp)
    agent = Agent(node, port, proc, log)
    wait_until(lambda: http(f"{agent.url}/v2/health/ready", timeout=2)[0] == 200, f"agent {node} ready", proc=proc, log=log)
    return agent


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def query(prom_url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; raises with Prometheus' error for invalid PromQL."""
    status, body = http(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    data = json.loads(body)
    assert status == 200, f"{expr}: HTTP {status}: {body[:300]!r}"
    assert data["status"] == "success", f"{expr}: {data.get('error')}"
    return list(data["data"]["result"])


def query_range(prom_url: str, expr: str, start: float) -> list[dict[str, Any]]:
    """Range query from ``start`` to now at the scrape interval, as a Grafana time series panel asks."""
    # The end lies a little ahead so that the last step sees the newest scrape (e.g. the outage).
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{time.time() + 2:.3f}", "step": "1"}
    status, body = http(f"{prom_url}/api/v1/query_range?" + urllib.parse.urlencode(params))
    data = json.loads(body)
    assert status == 200, f"{expr}: HTTP {status}: {body[:300]!r}"
    assert data["status"] == "success", f"{expr}: {data.get('error')}"
    return list(data["data"]["result"])


def infer(agent: Agent, rows: int) -> int:
    data = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data.ravel().tolist()}]}
    return http(f"{agent.url}/v2/models/digits/infer", json.dumps(body).encode())[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prom-e2e")
    model = tmp / "digits.onnx"
    make_model(model)
    agents: list[Agent] = []
    prom: subprocess.Popen[bytes] | None = None
    side = ClusterSide(tmp / "cluster")
    try:
        side.start()
        agents.append(start_agent(tmp, "edge-1", model, []))
        agents.append(start_agent(tmp, "edge-2", model, ["--batching", "--max-batch-size", "4"]))
        config = {
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{
                # honor_labels as in the chart's monitors: the agents' per-model `namespace` (the EdgeModel's) wins
                # over the pod's namespace, which only series without a model (up, process metrics) keep.
                "job_name": "edgemodel-agents", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{a.port}"],
                                    "labels": {"component": "agent", "node": a.node, "namespace": "edgemodel"}}
                                   for a in agents] + [
                    {"targets": [f"127.0.0.1:{side.agent_port}"],
                     "labels": {"component": "agent", "node": side.node, "namespace": "edgemodel"}}],
            }, {
                # honor_labels: the operator's own `namespace` label (the EdgeModel's) wins, as in the chart's monitors.
                "job_name": "edgemodel-operator", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{side.operator_metrics}"],
                                    "labels": {"component": "operator", "node": "cloud-1"}}],
            }],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        plog = tmp / "prometheus.log"
        prom = subprocess.Popen(
            [str(prometheus), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=plog.open("wb"), stderr=subprocess.STDOUT)
        prom_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http(f"{prom_url}/-/ready", timeout=2)[0] == 200, "prometheus ready", proc=prom, log=plog)
        # Real traffic, bounded: single rows and batches from 4 threads, plus malformed requests (400).
        from concurrent.futures import ThreadPoolExecutor

        wait_until(lambda: len(query(prom_url, 'up{component="agent"} == 1')) == 3, "the three agents scraped",
                   timeout=90, log=side.agent_log)
        wait_until(lambda: query(prom_url, 'up{component="operator"} == 1'), "the operator scraped", timeout=90,
                   log=side.operator_log)
        side.cluster.create(broken_edgemodel())
        codes: list[int] = []
        traffic_start = time.time()
        with ThreadPoolExecutor(4) as pool:
            for _round in range(12):  # ~12 s of traffic: several scrapes see it rise
                codes += list(pool.map(lambda i: infer(agents[i % 2], 1 + i % 3), range(20)))
                codes.append(http(f"{agents[0].url}/v2/models/digits/infer", b'{"inputs": []}')[0])
                time.sleep(1.0)
        assert codes.count(200) == 240, codes
        assert set(codes) <= {200, 400}, codes
        wait_until(lambda: query(prom_url, "sum(edgemodel_requests_total)") and
                   float(query(prom_url, "sum(edgemodel_requests_total)")[0]["value"][1]) >= 252,
                   "prometheus to scrape the traffic")
        wait_until(lambda: query(prom_url, 'edgemodel_operator_conversions_total{outcome="failed"} > 0'),
                   "the failed conversion to be counted", timeout=120, log=side.operator_log)
        # An outage: the second agent goes away and stays down.
        stop(agents[1].proc)
        wait_until(lambda: query(prom_url, 'up{node="edge-2"} == 0'), "the outage to be scraped")
        yield Stack(agents, prom_url, prom, traffic_start, side)
    finally:
        for a in agents:
            stop(a.proc)
        if prom is not None:
            stop(prom)
        side.close()


PANELS = [q for path in sorted(DASHBOARDS.glob("*.json")) if path.stem not in ELSEWHERE for q in board_queries(path)]


@pytest.mark.parametrize(("board", "title", "expr"), PANELS, ids=[f"{b}:{t}" for b, t, _ in PANELS])
def test_dashboard_query_returns_data(stack: Stack, board: str, title: str, expr: str) -> None:
    if expr.startswith("label_values("):
        metric, label = re.match(r"label_values\((\w+), (\w+)\)", expr).groups()  # type: ignore[union-attr]
        status, body = http(f"{stack.prom_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))
        values = json.loads(body)["data"]
        assert status == 200
        assert values, f"{title}: no values for {expr}"
        expected = {"node": {"edge-1", "edge-2"}, "model": {"digits"}, "namespace": {"default"}}[label]
        assert set(values) >= expected
        return
    series = query_range(stack.prom_url, concrete(expr), stack.traffic_start)
    if no_series_expected(expr):
        return  # valid PromQL, evaluated; this run cannot produce its series (NO_SERIES_HERE says why)
    values = [float(v) for s in series for _t, v in s["values"]]
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    assert finite, f"{board} / {title}: no data for {concrete(expr)} (series: {len(series)}, points: {len(values)})"


def test_latency_panels_see_both_nodes_and_real_values(stack: Stack) -> None:
    p95 = query(stack.prom_url, 'histogram_quantile(0.95, sum by (le, node) (increase(edgemodel_request_duration_seconds_bucket[10m])))')
    assert {s["metric"]["node"] for s in p95} == {"edge-1", "edge-2"}
    assert all(0 < float(s["value"][1]) < 1.0 for s in p95)
    errors = query(stack.prom_url, 'sum by (code) (increase(edgemodel_requests_total{code="400"}[10m]))')
    assert errors
    assert float(errors[0]["value"][1]) > 0
    batch = query(stack.prom_url, 'max(max_over_time(edgemodel_batch_size_sum{node="edge-2"}[10m]) '
                                  '/ max_over_time(edgemodel_batch_size_count{node="edge-2"}[10m]))')
    assert float(batch[0]["value"][1]) >= 1.0


def test_rules_load_and_every_alert_expression_evaluates(stack: Stack) -> None:
    status, body = http(f"{stack.prom_url}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    rules = yaml.safe_load(ALERTS.read_text())
    names = {r.get("alert") or r.get("record") for g in rules["groups"] for r in g["rules"]}
    assert {r["name"] for r in loaded} == names
    for g in rules["groups"]:
        for r in g["rules"]:
            query(stack.prom_url, r["expr"])  # valid, evaluated by the real server
    p95 = query_range(stack.prom_url, "edgemodel:request_duration_seconds:p95_5m", stack.traffic_start)
    assert {s["metric"]["node"] for s in p95} == {"edge-1", "edge-2"}


def test_agent_down_alert_fires_on_the_real_outage(stack: Stack) -> None:
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "EdgemodelAgentDown")
    firing = query(stack.prom_url, rule["expr"])
    assert [s["metric"]["node"] for s in firing] == ["edge-2"]
    assert query(stack.prom_url, 'up{component="agent", node="edge-1"} == 1')
    pending = wait_until(lambda: query(stack.prom_url, 'ALERTS{alertname="EdgemodelAgentDown"}'),
                         "EdgemodelAgentDown to become pending", timeout=30)
    assert pending[0]["metric"]["alertstate"] in {"pending", "firing"}
    assert pending[0]["metric"]["node"] == "edge-2"


def test_model_info_of_the_served_model(stack: Stack) -> None:
    not_ready = query(stack.prom_url, next(r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                                           for r in g["rules"] if r.get("alert") == "EdgemodelModelNotReady"))
    assert not_ready == [], "a ready model must not look not-ready"
    info = query(stack.prom_url, 'edgemodel_model_info{node="edge-1"}')
    assert info[0]["metric"]["provider"] == "CPUExecutionProvider"
    assert re.fullmatch(r"[0-9a-f]{64}", info[0]["metric"]["sha256"])


def test_promtool_check_metrics_on_a_real_agent(stack: Stack) -> None:
    promtool = require_tool("promtool")
    status, text = http(f"{stack.agents[0].url}/metrics")
    assert status == 200
    proc = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_operator_is_scraped_and_reports_the_edgemodel(stack: Stack) -> None:
    assert query(stack.prom_url, 'up{component="operator"} == 1')
    nodes = query(stack.prom_url, 'edgemodel_operator_nodes{namespace="default", model="missing"}')
    assert {s["metric"]["state"] for s in nodes} >= {"ready", "updating", "failed", "stale", "unassigned"}


def test_conversion_failing_alert_fires_on_the_real_failed_job(stack: Stack) -> None:
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "EdgemodelConversionFailing")
    firing = query(stack.prom_url, rule["expr"])
    assert firing, "the failed conversion did not provoke EdgemodelConversionFailing"
    assert firing[0]["metric"]["outcome"] == "failed"
    alert = wait_until(lambda: query(stack.prom_url, 'ALERTS{alertname="EdgemodelConversionFailing", alertstate="firing"}'),
                       "EdgemodelConversionFailing to fire", timeout=30)
    assert alert[0]["metric"]["severity"] == "warning"


def test_the_chart_rbac_is_enough_for_the_real_operator_and_agent(stack: Stack) -> None:
    """Both ran under tokens holding exactly the chart's ClusterRole rules: nothing was forbidden,
    the agent registered and heartbeats, the operator reconciled the EdgeModel to a failed conversion."""
    side = stack.side
    for log in (side.operator_log, side.agent_log):
        text = log.read_text(errors="replace")
        denied = [line for line in text.splitlines() if FORBIDDEN_STATUS.search(line)]
        assert not denied, denied[:5]
        assert "forbidden" not in text.lower(), [line for line in text.splitlines() if "orbidden" in line][:5]
    agent = side.cluster.get("edgemodel.io/v1alpha1", "EdgeAgent", side.node)
    assert agent is not None
    assert agent["status"]["heartbeatTime"]
    model = side.cluster.get("edgemodel.io/v1alpha1", "EdgeModel", "missing", "default")
    assert model is not None
    converted = next(c for c in model["status"]["conditions"] if c["type"] == "Converted")
    assert converted["status"] == "False"
    assert converted["reason"] == "SourceUnreadable", converted


def test_promtool_check_metrics_on_the_real_operator(stack: Stack) -> None:
    promtool = require_tool("promtool")
    status, text = http(f"http://127.0.0.1:{stack.side.operator_metrics}/metrics")
    assert status == 200
    assert b"edgemodel_operator_conversions_total" in text
    proc = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
