"""Small helpers shared by the emulator tests: raw HTTP against the emulated API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

from edgemodel_dev.cluster import LocalCluster

JSON = dict[str, Any]


def http(cluster: LocalCluster, method: str, path: str, body: Any = None, content_type: str = "application/json",
         token: str | None = None, headers: dict[str, str] | None = None) -> requests.Response:
    """One request with the admin token (or ``token``); ``body`` is sent as JSON unless it is bytes."""
    all_headers = {"Authorization": f"Bearer {token or cluster.admin_token}", "Content-Type": content_type}
    all_headers.update(headers or {})
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    return requests.request(method, cluster.url + path, data=data, headers=all_headers, timeout=30,
                            verify=str(cluster.ca_path) if cluster.ca_path else True)


def watch_lines(cluster: LocalCluster, path: str, token: str | None = None,
                read_timeout: float = 20.0) -> Iterator[JSON]:
    """The events of a watch request, one dict per line, until the server ends the stream."""
    with requests.get(cluster.url + path, headers={"Authorization": f"Bearer {token or cluster.admin_token}"},
                      stream=True, timeout=(5, read_timeout),
                      verify=str(cluster.ca_path) if cluster.ca_path else True) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            if line:
                yield json.loads(line)


def configmap(name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None) -> JSON:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data or {"key": "value"}}
