"""The chart's embedded copies (CRDs, alert rules, dashboards) match their sources; alert rules
pass promtool; dashboards are what their generator writes and are well-formed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT, require_tool
from tests.helm.chart import SWITCHES, find, one, render

ALERTS = ROOT / "helm" / "alerts"
DASHBOARDS = ROOT / "helm" / "dashboards"


def test_chart_copies_are_in_sync_with_their_sources() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "helm" / "sync-chart-files.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_rendered_crds_are_the_generated_crds_plus_metadata() -> None:
    rendered = {c["metadata"]["name"]: c for c in find(render({}), "CustomResourceDefinition")}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        got = rendered[source["metadata"]["name"]]
        assert got["spec"] == source["spec"], f"{path.name}: spec differs from crds/"
        assert source["metadata"]["labels"].items() <= got["metadata"]["labels"].items()
        assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == "em"


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run([str(promtool), "check", "rules", str(ALERTS / "edgemodel-alerts.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_alert_unit_tests() -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run([str(promtool), "test", "rules", "edgemodel-alerts.test.yaml"], cwd=ALERTS,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((ALERTS / "edgemodel-alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((ALERTS / "edgemodel-alerts.test.yaml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == fired, f"alerts never fired in a unit test: {alerts - fired}"
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                assert r["labels"]["severity"] in {"warning", "critical"}
                assert r["annotations"]["summary"]
                assert r["annotations"]["description"]


def test_prometheus_rule_in_chart_equals_the_rule_file() -> None:
    rule = one(render(SWITCHES["prometheus-rule"]), "PrometheusRule", "em-edgemodel")
    assert rule["spec"] == yaml.safe_load((ALERTS / "edgemodel-alerts.yaml").read_text())


def test_dashboards_are_generated() -> None:
    proc = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_dashboards_are_well_formed_with_variables() -> None:
    boards = sorted(DASHBOARDS.glob("*.json"))
    assert [b.name for b in boards] == ["edgemodel-conversion.json", "edgemodel-federated.json",
                                        "edgemodel-fleet.json", "edgemodel-latency.json"]
    uids = set()
    for path in boards:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        names = [v["name"] for v in board["templating"]["list"]]
        expected = ["datasource", "namespace", "training"] if path.name == "edgemodel-federated.json" else [
            "datasource", "namespace", "model", "node"]
        assert names == expected, path.name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}"
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24
            for t in panel["targets"]:
                assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    assert len(uids) == 4


def test_dashboard_queries_filter_by_the_variables() -> None:
    """Agent panels filter by $model and $node; operator per-model panels by $namespace and $model;
    per-training federated panels by $namespace and $training."""
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel["targets"]:
                expr = t["expr"]
                for metric in re.findall(r"(edgemodel_[a-z_]+)\{", expr):
                    if metric.startswith("edgemodel_federated_"):
                        if metric != "edgemodel_federated_trainings_total":  # by outcome only: no training label
                            assert '$namespace' in expr, f"{panel['title']}: {expr}"
                            assert '$training' in expr, f"{panel['title']}: {expr}"
                    elif metric.startswith("edgemodel_operator_") and metric not in (
                            "edgemodel_operator_conversions_total", "edgemodel_operator_rollouts_total",
                            "edgemodel_operator_analysis_total", "edgemodel_operator_reconcile_duration_seconds_bucket",
                            "edgemodel_operator_agents"):  # fleet-wide liveness: no model
                        assert '$namespace' in expr, f"{panel['title']}: {expr}"
                        assert '$model' in expr, f"{panel['title']}: {expr}"
                    elif metric.startswith("edgemodel_") and "download" not in metric and not metric.startswith("edgemodel_operator_"):
                        assert '$node' in expr, f"{panel['title']}: {expr}"
                        assert '$model' in expr, f"{panel['title']}: {expr}"


def test_observability_doc_lists_every_alert_and_panel() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    rules = yaml.safe_load((ALERTS / "edgemodel-alerts.yaml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            assert name in doc, f"docs/observability.md does not mention {name}"
            if "alert" in r:
                assert " ".join(r["expr"].split()).replace("|", "\\|") in doc, f"{name}: expression differs in the doc"
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel["targets"]:
                assert t["expr"].replace("|", "\\|") in doc, f"{panel['title']}: query missing from the doc"
