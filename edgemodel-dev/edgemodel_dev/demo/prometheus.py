"""A real Prometheus server for the demo: config, start on 127.0.0.1, PromQL queries."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from edgemodel_dev.demo.processes import ProcessGroup, wait_http
from edgemodel_dev.net import free_port


def find_prometheus() -> str | None:
    """Path of the prometheus binary: ``$EDGEMODEL_PROMETHEUS``, then ``$PATH``; or None."""
    return os.environ.get("EDGEMODEL_PROMETHEUS") or shutil.which("prometheus")


def write_config(path: Path, jobs: dict[str, list[str]], scrape_interval: str = "2s") -> None:
    """A scrape config with one job per entry of ``jobs`` (job name -> host:port targets)."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items() if targets
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Prometheus:
    """One Prometheus process with its own temporary TSDB."""

    def __init__(self, binary: str, workdir: Path, procs: ProcessGroup) -> None:
        self.binary = binary
        self.workdir = workdir
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, jobs: dict[str, list[str]], timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        write_config(config, jobs)
        proc = self.procs.start(
            "prometheus",
            [
                self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ],
        )
        wait_http(f"{self.url}/-/ready", timeout, proc, self.procs.log_path("prometheus"))

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r} failed: {body}")
        return list(body["data"]["result"])
