"""The demo's split chapter: the digits CNN cut between the edge nodes (head) and the cloud node (tail).

What it reads comes from where an operator of the fleet would read it: the EdgeModel's status (the cut
the conversion Job chose) and the edge agents' ``/metrics`` (time per stage, bytes on the link, which
path answered).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import RenderableType
from rich.table import Table

from edgemodel_dev.demo.traffic import TrafficStats

SPLIT_MODEL = "digits-split"
EXAMPLE = Path(__file__).resolve().with_name("examples") / "digits-split-edgemodel.yaml"
STAGES = ("head", "encode", "transfer", "tail", "local")


def split_manifest(model_pt: Path, val_npz: Path, validation_samples: int = 128) -> dict[str, Any]:
    """examples/digits-split-edgemodel.yaml with its URIs pointed at the model the demo trained."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["source"]["uri"] = model_pt.resolve().as_uri()
    spec["validation"]["dataUri"] = val_npz.resolve().as_uri()
    spec["validation"]["samples"] = validation_samples
    return doc


@dataclass
class SplitReading:
    """The split metrics of one model summed over edge agents (counters and histogram sums/counts)."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_count: dict[str, float] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)
    bytes_up: float = 0.0
    bytes_down: float = 0.0

    def since(self, before: SplitReading) -> SplitReading:
        """What happened between ``before`` and this reading."""
        def minus(now: dict[str, float], then: dict[str, float]) -> dict[str, float]:
            return {k: v - then.get(k, 0.0) for k, v in now.items()}

        return SplitReading(minus(self.stage_seconds, before.stage_seconds),
                            minus(self.stage_count, before.stage_count), minus(self.requests, before.requests),
                            self.bytes_up - before.bytes_up, self.bytes_down - before.bytes_down)

    def mean_ms(self, stage: str) -> float | None:
        """Mean time of ``stage`` per request that ran it, in ms (None when none did)."""
        count = self.stage_count.get(stage, 0.0)
        return self.stage_seconds.get(stage, 0.0) / count * 1000.0 if count else None

    @property
    def bytes_up_per_request(self) -> float | None:
        split = self.requests.get("split", 0.0)
        return self.bytes_up / split if split else None


def read_split_metrics(endpoints: list[str], model: str, namespace: str = "default") -> SplitReading:
    """Scrape every endpoint's ``/metrics`` and sum the split series of EdgeModel ``namespace/model``."""
    reading = SplitReading()
    for endpoint in endpoints:
        with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") != model or sample.labels.get("namespace") != namespace:
                    continue
                if sample.name == "edgemodel_split_stage_duration_seconds_sum":
                    stage = sample.labels["stage"]
                    reading.stage_seconds[stage] = reading.stage_seconds.get(stage, 0.0) + sample.value
                elif sample.name == "edgemodel_split_stage_duration_seconds_count":
                    stage = sample.labels["stage"]
                    reading.stage_count[stage] = reading.stage_count.get(stage, 0.0) + sample.value
                elif sample.name == "edgemodel_split_requests_total":
                    path = sample.labels["path"]
                    reading.requests[path] = reading.requests.get(path, 0.0) + sample.value
                elif sample.name == "edgemodel_split_transfer_bytes_total":
                    if sample.labels["direction"] == "up":
                        reading.bytes_up += sample.value
                    else:
                        reading.bytes_down += sample.value
    return reading


def split_table(stats: TrafficStats, reading: SplitReading, title: str) -> RenderableType:
    """Client-side numbers next to the agents' per-stage split metrics."""
    table = Table(title=title, title_justify="left")
    for col in ("answers", "errors", "accuracy", "client p50 / p95 ms", *(f"{s} ms" for s in STAGES), "features B/req",
                "answered by"):
        table.add_column(col, justify="right")
    acc = stats.accuracy
    p50, p95 = stats.percentile(50), stats.percentile(95)
    per_request = reading.bytes_up_per_request
    table.add_row(
        str(stats.ok), str(stats.errors), "-" if acc is None else f"{acc * 100:.2f}%",
        "-" if p50 is None or p95 is None else f"{p50:.2f} / {p95:.2f}",
        *(_ms(reading.mean_ms(stage)) for stage in STAGES),
        "-" if per_request is None else f"{per_request:.0f}",
        ", ".join(f"{path} {count:.0f}" for path, count in sorted(reading.requests.items()) if count) or "-",
    )
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
