#!/usr/bin/env python3
"""Generate the Grafana dashboards (JSON, schemaVersion 39) in this folder.

The dashboards are data: this script is their source so that every panel is built the same way
(datasource variable, the namespace/model/node variables, units). Edit here, then run
  .venv/bin/python helm/dashboards/generate.py && .venv/bin/python helm/sync-chart-files.py
tests/helm checks the JSON files are what this script writes, and evaluates every panel query
against a real Prometheus scraping real agents (tests/helm/test_prometheus_e2e.py).

Variables: $namespace (EdgeModel namespace: the operator's and the agents' metrics carry it, so
same-named models of two namespaces are two series), $model, $node (the scrape target's node label). Grafana's $__rate_interval and $__range are used in range selectors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
AGENT_SEL = 'namespace=~"$namespace", model=~"$model", node=~"$node"'
OP_SEL = 'namespace=~"$namespace", model=~"$model"'
FED_SEL = 'namespace=~"$namespace", training=~"$training"'
RATE = "$__rate_interval"


def quantile(q: float, histogram: str, by: str, selector: str = AGENT_SEL, window: str = RATE) -> str:
    """PromQL for the ``q`` quantile of ``histogram`` (without ``_bucket``) per ``by`` labels."""
    series = f"{histogram}_bucket{{{selector}}}" if selector else f"{histogram}_bucket"
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({series}[{window}])))"


def query_var(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value template variable filled from a label_values query (All selected)."""
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }


DATASOURCE_VAR = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {}, "hide": 0}


def variables() -> list[dict[str, Any]]:
    """datasource, namespace, model and node template variables."""
    return [
        DATASOURCE_VAR,
        query_var("namespace", "Namespace", "label_values(edgemodel_operator_nodes, namespace)"),
        query_var("model", "Model", "label_values(edgemodel_model_info, model)"),
        query_var("node", "Node", "label_values(edgemodel_model_info, node)"),
    ]


class Board:
    """Collects panels on a 24-column grid."""

    def __init__(self, uid: str, title: str, description: str, variables: list[dict[str, Any]] | None = None) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def add(self, kind: str, title: str, exprs: list[tuple[str, str]], *, w: int = 12, h: int = 8,
            unit: str = "short", description: str = "", instant: bool = False, **options: Any) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        targets = [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             "instant": instant, "range": not instant, **({"format": "table"} if kind == "table" else {})}
            for i, (expr, legend) in enumerate(exprs)
        ]
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DS, "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": options,
        }
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["edgemodel"], "timezone": "browser", "editable": True, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "templating": {"list": self.variables if self.variables is not None else variables()},
            "annotations": {"list": []},
            "links": [{"title": "edgemodel dashboards", "type": "dashboards", "tags": ["edgemodel"], "asDropdown": True}],
            "panels": self.panels,
        }


def fleet() -> Board:
    b = Board("edgemodel-fleet", "edgemodel / Fleet overview",
              "Agents, the models and revisions each node serves, their states, and rollout progress.")
    b.add("stat", "Agents up", [('sum(up{component=~"agent|cloud-agent", node=~"$node"})', "up")], w=6, h=4,
          description="Agent pods Prometheus scraped successfully.")
    b.add("stat", "Agents down", [('count(up{component=~"agent|cloud-agent", node=~"$node"} == 0)', "down")], w=6, h=4,
          description="Agent pods that did not answer the last scrape (EdgemodelAgentDown fires after 5 minutes).")
    b.add("stat", "Operator replicas up", [('sum(up{component="operator"})', "up")], w=6, h=4,
          description="Operator replicas (one works, the other waits: kopf peering).")
    b.add("stat", "Model versions ready", [(f'count(max by (namespace, model, version, node) (edgemodel_model_state{{state="Ready", {AGENT_SEL}}}) == 1)', "ready")],
          w=6, h=4, description="(node, model, version) pairs in state Ready.")
    b.add("stat", "Nodes stale (no Lease renewal)", [('max(edgemodel_operator_agents{liveness="stale"})', "stale")], w=6, h=4,
          description="Agents whose heartbeat Lease was not renewed within the operator's stale timeout "
                      "(EdgemodelNodesStale fires after 5 minutes); they keep their models and are not counted ready.")
    b.add("stat", "Nodes fresh (Lease renewed)", [('max(edgemodel_operator_agents{liveness="fresh"})', "fresh")], w=6, h=4,
          description="Agents that renewed their heartbeat Lease within the stale timeout (the liveness signal).")
    b.add("timeseries", "Heartbeat lag (renewal -> operator)", [(
        f'max(rate(edgemodel_operator_lease_lag_seconds_sum[{RATE}]) / rate(edgemodel_operator_lease_lag_seconds_count[{RATE}]))',
        "mean lag")], w=12, h=4, unit="s",
          description="Mean time from an agent renewing its Lease to the operator seeing it: grows when the API server "
                      "falls behind (EdgemodelLeaseLagHigh fires above 2 s).")
    b.add("table", "Model state per node", [(f'max by (node, namespace, model, version, state) (edgemodel_model_state{{{AGENT_SEL}}}) == 1', "")],
          w=12, h=9, instant=True, description="Current state of every assigned model version on every node.")
    b.add("table", "Served revisions", [(f'max by (node, namespace, model, version, provider, sha256) (edgemodel_model_info{{{AGENT_SEL}}})', "")],
          w=12, h=9, instant=True, description="Model versions answering requests, with execution provider and artifact sha256.")
    b.add("timeseries", "Rollout progress (nodes per state)", [(f'sum by (namespace, model, state) (edgemodel_operator_nodes{{{OP_SEL}}})', "{{namespace}}/{{model}} {{state}}")],
          w=12, description="Selected nodes of each EdgeModel by state: ready, updating, failed, stale, unassigned.")
    b.add("timeseries", "Rollouts and analysis verdicts", [
        ('sum by (outcome) (increase(edgemodel_operator_rollouts_total[$__range]))', "rollout {{outcome}}"),
        ('sum by (result, source) (increase(edgemodel_operator_analysis_total[$__range]))', "analysis {{result}} ({{source}})"),
    ], w=12, description="Finished rollouts by outcome and canary analysis verdicts in the time range.")
    b.add("timeseries", "Artifact downloads", [(f'sum by (node) (rate(edgemodel_artifact_download_bytes_total{{node=~"$node"}}[{RATE}]))', "{{node}}")],
          w=8, unit="Bps", description="Bytes per second agents download from the artifact store.")
    b.add("timeseries", "Artifacts rejected or failed", [('sum by (node, reason) (increase(edgemodel_artifact_download_failures_total{node=~"$node"}[$__range]))', "{{node}} {{reason}}")],
          w=8, description="Downloads that failed or artifacts rejected (DigestMismatch, SignatureInvalid) in the time range.")
    b.add("timeseries", "Model load time", [(
        f'max by (namespace, model, version, node) (edgemodel_model_load_duration_seconds_sum{{{AGENT_SEL}}} '
        f'/ edgemodel_model_load_duration_seconds_count{{{AGENT_SEL}}})', "{{node}} {{namespace}}/{{model}} v{{version}}")],
          w=8, unit="s", description="Session creation and warm-up time of each loaded model version (mean over its loads).")
    return b


def latency() -> Board:
    b = Board("edgemodel-latency", "edgemodel / Inference latency",
              "Request latency percentiles by model, revision, provider and node; throughput, errors, queue wait, batch size.")
    for q in ("0.5", "0.95", "0.99"):
        b.add("timeseries", f"Request latency p{round(float(q) * 100)}", [(
            quantile(q, "edgemodel_request_duration_seconds", "namespace, model, version, provider, node"),
            "{{node}} {{namespace}}/{{model}} v{{version}} {{provider}}")], w=8, unit="s",
            description=f"{q} quantile of the time from the request body read to the response built.")
    b.add("timeseries", "ONNX Runtime compute p95", [(
        quantile(0.95, "edgemodel_inference_duration_seconds", "namespace, model, version, provider, node"),
        "{{node}} {{namespace}}/{{model}} v{{version}} {{provider}}")], w=12, unit="s",
        description="Compute time per ONNX Runtime run (a batched run counts once).")
    b.add("timeseries", "Throughput", [(
        f'sum by (namespace, model, version, node) (rate(edgemodel_requests_total{{{AGENT_SEL}}}[{RATE}]))', "{{node}} {{namespace}}/{{model}} v{{version}}")],
        w=12, unit="reqps", description="Inference requests per second.")
    b.add("timeseries", "Errors by code", [(
        f'sum by (namespace, model, version, node, code) (rate(edgemodel_requests_total{{code=~"[45]..", {AGENT_SEL}}}[{RATE}]))',
        "{{node}} {{namespace}}/{{model}} v{{version}} {{code}}")], w=12, unit="reqps",
        description="Failed requests per second (4xx: bad input, 5xx: server errors).")
    b.add("timeseries", "Error ratio", [(
        f'sum by (namespace, model, version) (rate(edgemodel_requests_total{{code=~"[45]..", {AGENT_SEL}}}[{RATE}])) '
        f'/ sum by (namespace, model, version) (rate(edgemodel_requests_total{{{AGENT_SEL}}}[{RATE}]))', "{{namespace}}/{{model}} v{{version}}")],
        w=12, unit="percentunit", description="Fraction of requests that failed.")
    b.add("timeseries", "Queue wait p95", [(
        quantile(0.95, "edgemodel_queue_wait_seconds", "namespace, model, version, node"),
        "{{node}} {{namespace}}/{{model}} v{{version}}")], w=12, unit="s",
        description="Time a request waited for a worker (and for its batch to form).")
    b.add("timeseries", "Mean batch size", [(
        f'sum by (namespace, model, version, node) (rate(edgemodel_batch_size_sum{{{AGENT_SEL}}}[{RATE}])) '
        f'/ sum by (namespace, model, version, node) (rate(edgemodel_batch_size_count{{{AGENT_SEL}}}[{RATE}]))',
        "{{node}} {{namespace}}/{{model}} v{{version}}")], w=12,
        description="Requests per ONNX Runtime run (1 without dynamic batching).")
    b.add("heatmap", "Request latency distribution", [(
        f'sum by (le) (increase(edgemodel_request_duration_seconds_bucket{{{AGENT_SEL}}}[{RATE}]))', "{{le}}")],
        w=24, unit="s", description="Histogram buckets of request latency over time.",
        calculate=False, yAxis={"unit": "s"}, cellGap=1)
    for target in b.panels[-1]["targets"]:
        target["format"] = "heatmap"
    # Split inference (docs/split-inference.md): where the time of a split request goes.
    b.add("timeseries", "Split: time per stage p95", [(
        quantile(0.95, "edgemodel_split_stage_duration_seconds", "namespace, model, version, stage"),
        "{{namespace}}/{{model}} v{{version}} {{stage}}")],
        w=8, unit="s", description="Split requests by stage: head (edge compute), encode, transfer (round trip minus "
        "the cloud's own time), tail (cloud compute), local (the whole model on the edge after a cloud failure).")
    b.add("timeseries", "Split: bytes on the link", [(
        f'sum by (namespace, model, version, direction) (rate(edgemodel_split_transfer_bytes_total{{{AGENT_SEL}}}[{RATE}]))',
        "{{namespace}}/{{model}} v{{version}} {{direction}}")], w=8, unit="Bps",
        description="Encoded features sent to the cloud (up) and outputs received (down) per second.")
    b.add("timeseries", "Split: answered by", [(
        f'sum by (namespace, model, version, path) (rate(edgemodel_split_requests_total{{{AGENT_SEL}}}[{RATE}]))',
        "{{namespace}}/{{model}} v{{version}} {{path}}")], w=8, unit="reqps",
        description="Split requests answered by the cloud tail (split), by the whole model on the edge (local) or "
        "refused with 503 (unavailable): a rising local or unavailable means the cloud is unreachable.")
    b.add("timeseries", "Split: cloud tail compute p95", [(
        quantile(0.95, "edgemodel_split_tail_duration_seconds", "namespace, model, version, node"), "{{node}} {{namespace}}/{{model}} v{{version}}")],
        w=12, unit="s", description="Compute time of the tails on the cloud agents (the other side of the tail stage).")
    b.add("timeseries", "Split: cloud tail runs", [(
        f'sum by (namespace, model, version, node, result) (rate(edgemodel_split_tail_requests_total{{{AGENT_SEL}}}[{RATE}]))',
        "{{node}} {{namespace}}/{{model}} v{{version}} {{result}}")], w=12, unit="reqps",
        description="Tail runs per second on the cloud agents, ok or error (features that do not fit, a failing tail).")
    return b


def conversion() -> Board:
    b = Board("edgemodel-conversion", "edgemodel / Conversion",
              "Conversion Jobs: outcomes and durations, the candidates measured, which was chosen and its speedup over FP32.")
    b.add("stat", "Conversions succeeded", [('sum(increase(edgemodel_operator_conversions_total{outcome="succeeded"}[$__range]))', "succeeded")],
          w=8, h=4, description="Conversion Jobs that produced a signed artifact in the time range.")
    b.add("stat", "Conversions failed", [('sum(increase(edgemodel_operator_conversions_total{outcome="failed"}[$__range]))', "failed")],
          w=8, h=4, description="Conversion Jobs that failed in the time range (EdgemodelConversionFailing).")
    b.add("stat", "Conversions started", [('sum(increase(edgemodel_operator_conversions_total{outcome="started"}[$__range]))', "started")],
          w=8, h=4, description="Conversion Jobs created in the time range.")
    b.add("timeseries", "Conversion duration p50 / p95", [
        (quantile(0.5, "edgemodel_operator_conversion_duration_seconds", "namespace, model", OP_SEL, "$__range"),
         "p50 {{namespace}}/{{model}}"),
        (quantile(0.95, "edgemodel_operator_conversion_duration_seconds", "namespace, model", OP_SEL, "$__range"),
         "p95 {{namespace}}/{{model}}"),
    ], w=12, unit="s", description="Time from Job creation to its result, per EdgeModel.")
    b.add("table", "Candidates of the latest revision", [(
        f'max by (namespace, model, revision, hardware_class, candidate, precision, chosen) (edgemodel_operator_candidate_latency_seconds{{{OP_SEL}}})', "")],
        w=12, h=9, unit="s", instant=True,
        description="Batch-1 median latency of every measured candidate; chosen=true marks the shipped one.")
    b.add("bargauge", "Speedup of the chosen candidate over FP32", [(
        f'max by (namespace, model, hardware_class, candidate) (edgemodel_operator_candidate_speedup{{chosen="true", {OP_SEL}}})',
        "{{namespace}}/{{model}} {{hardware_class}} {{candidate}}")], w=12, unit="x", instant=True,
        description="FP32 baseline p50 divided by the chosen candidate's p50.")
    b.add("timeseries", "Operator reconcile p95", [(
        quantile(0.95, "edgemodel_operator_reconcile_duration_seconds", "result", selector=""), "{{result}}")],
        w=12, unit="s", description="Duration of one EdgeModel reconcile by result.")
    return b


def federated() -> Board:
    """FederatedTraining (docs/federated.md): the operator's edgemodel_federated_* series, per namespace/training."""
    b = Board("edgemodel-federated", "edgemodel / Federated training",
              "FederatedTrainings: rounds, validation accuracy of the global model, participating and dropped "
              "clients, bytes exchanged and round time.",
              [DATASOURCE_VAR,
               query_var("namespace", "Namespace", "label_values(edgemodel_federated_round, namespace)"),
               query_var("training", "Training", "label_values(edgemodel_federated_round, training)")])
    for outcome in ("started", "succeeded", "failed"):
        b.add("stat", f"Trainings {outcome}", [(
            f'sum(increase(edgemodel_federated_trainings_total{{outcome="{outcome}"}}[$__range]))', outcome)],
            w=8, h=4, description=f"FederatedTrainings {outcome} in the time range.")
    b.add("timeseries", "Round", [(f"max by (namespace, training) (edgemodel_federated_round{{{FED_SEL}}})",
                                   "{{namespace}}/{{training}}")],
          w=12, description="Last finished round of each training.")
    b.add("timeseries", "Validation accuracy", [(
        f"max by (namespace, training) (edgemodel_federated_validation_accuracy{{{FED_SEL}}})", "{{namespace}}/{{training}}")],
        w=12, unit="percentunit",
        description="Accuracy of the global model on the validation set held in the cloud, after each round.")
    b.add("timeseries", "Clients in the last round", [(
        f"sum by (namespace, training, state) (edgemodel_federated_clients{{{FED_SEL}}})",
        "{{namespace}}/{{training}} {{state}}")],
        w=12, description="Clients aggregated (participating) and dropped (failed or silent past the round timeout).")
    b.add("timeseries", "Dropped clients", [(
        f"sum by (namespace, training) (increase(edgemodel_federated_dropped_clients_total{{{FED_SEL}}}[$__range]))",
        "{{namespace}}/{{training}}")],
        w=12, description="Client failures summed over the rounds in the time range.")
    b.add("timeseries", "Bytes exchanged", [(
        f"sum by (namespace, training) (rate(edgemodel_federated_bytes_total{{{FED_SEL}}}[{RATE}]))",
        "{{namespace}}/{{training}}")],
        w=12, unit="Bps", description="Model bytes sent to and received from the clients per second.")
    b.add("timeseries", "Round time p50 / p95", [
        (quantile(0.5, "edgemodel_federated_round_seconds", "namespace, training", FED_SEL, "$__range"),
         "p50 {{namespace}}/{{training}}"),
        (quantile(0.95, "edgemodel_federated_round_seconds", "namespace, training", FED_SEL, "$__range"),
         "p95 {{namespace}}/{{training}}"),
    ], w=12, unit="s", description="Wall time of one round (fit on the clients, aggregation, validation).")
    return b


BOARDS = {"edgemodel-fleet.json": fleet, "edgemodel-latency.json": latency, "edgemodel-conversion.json": conversion,
          "edgemodel-federated.json": federated}


def render(name: str) -> str:
    return json.dumps(BOARDS[name]().json(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name in BOARDS:
        path, text = HERE / name, render(name)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards: {', '.join(stale)}; run helm/dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
