"""kubeconfig files for the emulated cluster: a bearer token, and the CA when it serves HTTPS."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

CLUSTER_NAME = "edgemodel-dev"


def kubeconfig_text(server: str, token: str, user: str = "admin", namespace: str = "default",
                    ca_path: Path | None = None) -> str:
    cluster: dict[str, str] = {"server": server}
    if ca_path is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user,
                                                          "namespace": namespace}}],
        "current-context": CLUSTER_NAME,
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(path: Path, server: str, token: str, user: str = "admin", namespace: str = "default",
                     ca_path: Path | None = None) -> Path:
    """Write atomically (readers never see half a file); mode 0600 because it holds a token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(kubeconfig_text(server, token, user, namespace, ca_path))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path
