"""Rich renderables of the demo's state, built from plain API objects (dicts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from edgemodel_dev.demo.traffic import TrafficStats

STATE_STYLE = {"Ready": "green", "Failed": "red", "Downloading": "cyan", "Verifying": "cyan", "Loading": "yellow"}
PHASE_STYLE = {"Available": "bold green", "Degraded": "bold red", "Failed": "bold red", "RollingOut": "yellow", "Converting": "cyan"}


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def model_panel(em: dict[str, Any] | None) -> RenderableType:
    """Phase, revisions, rollout step and conditions of one EdgeModel."""
    if em is None:
        return Text("EdgeModel not created yet", style="dim")
    status = em.get("status") or {}
    rollout = status.get("rollout") or {}
    phase = status.get("phase", "Pending")
    head = Text.assemble(
        ("EdgeModel ", "bold"), (em["metadata"]["name"], "bold magenta"), "  phase ",
        (phase, PHASE_STYLE.get(phase, "")), f"  revision {status.get('revision', '-')}",
        f"  target {status.get('targetRevision', '-')}",
        f"  step {rollout.get('step', 0)}/{rollout.get('totalSteps', 0)}", f"  ready {status.get('ready', '0/0')}",
    )
    conds = Table(box=None, show_header=False, pad_edge=False)
    for cond in status.get("conditions", []):
        style = "green" if cond["status"] == "True" else ("red" if cond["type"] == "Degraded" and cond["status"] == "True" else "dim")
        if cond["type"] == "Degraded" and cond["status"] == "True":
            style = "bold red"
        conds.add_row(Text(cond["type"], style=style), cond["status"], cond.get("reason", ""), Text(cond.get("message", ""), overflow="fold"))
    return Group(head, conds)


def candidates_table(em: dict[str, Any] | None) -> RenderableType:
    """The conversion candidates with latency, metric, size and the choice."""
    table = Table(title="Conversion candidates (measured by the conversion Job)", title_justify="left")
    for col in ("candidate", "class", "precision", "p50 ms", "metric", "size KiB", "verdict"):
        table.add_column(col, justify="right" if col in ("p50 ms", "metric", "size KiB") else "left")
    for cand in ((em or {}).get("status") or {}).get("candidates", []):
        verdict = Text("chosen", style="bold green") if cand.get("chosen") else (
            Text("ok", style="green") if cand.get("accepted") else Text(cand.get("reason", "rejected")[:48], style="red"))
        size = cand.get("sizeBytes")
        table.add_row(
            cand["name"], cand["hardwareClass"], cand["precision"], _fmt(cand.get("p50Ms"), digits=3),
            _fmt(cand.get("metric"), digits=4), "-" if size is None else f"{size / 1024:.0f}", verdict,
        )
    return table


def nodes_table(agents: list[dict[str, Any]], model: str,
                node_labels: Mapping[str, Mapping[str, str]] | None = None) -> RenderableType:
    """Per-node state of ``model`` as the agents report it; the site from the Node's labels (what selection uses)."""
    table = Table(title="Nodes (EdgeAgent status)", title_justify="left")
    for col in ("node", "labels", "class", "revision", "serving", "state", "provider", "requests", "p95 ms"):
        table.add_column(col)
    for agent in sorted(agents, key=lambda a: a["metadata"]["name"]):
        labels = (node_labels or {}).get(agent["metadata"]["name"]) or {}
        site = labels.get("edgemodel.io/site", "")
        status = agent.get("status") or {}
        state = next((m for m in status.get("models", []) if m.get("name") == model), None)
        assigned = next((m for m in (agent.get("spec") or {}).get("models", []) if m.get("name") == model), None)
        st = state.get("state", "-") if state else "-"
        role = (state or {}).get("role", "full")
        table.add_row(
            agent["metadata"]["name"], site, (status.get("capabilities") or {}).get("hardwareClass", "-"),
            str(assigned["revision"]) if assigned else "-",
            str(state.get("servingRevision", "-")) if state else "-",
            Text(st if role == "full" else f"{st} ({role})", style=STATE_STYLE.get(st, "")),
            (state or {}).get("provider", "-"),
            str((state or {}).get("requestCount", "-")), _fmt((state or {}).get("p95Ms")),
        )
    return table


def traffic_panel(stats: TrafficStats | None) -> RenderableType:
    """Live client-side latency, throughput and accuracy."""
    if stats is None:
        return Text("no traffic yet", style="dim")
    acc = stats.accuracy
    versions = ", ".join(f"v{v}: {n}" for v, n in sorted(stats.versions.items()))
    return Text.assemble(
        ("Traffic ", "bold"), f"sent {stats.sent}  ok {stats.ok}  errors {stats.errors}  ",
        f"p50 {_fmt(stats.percentile(50), ' ms')}  p95 {_fmt(stats.percentile(95), ' ms')}  ",
        ("accuracy " + ("-" if acc is None else f"{acc * 100:.2f}%"), "bold green" if acc and acc > 0.9 else ""),
        f"  by version [{versions}]",
    )
