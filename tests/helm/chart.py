"""Rendering the edgemodel chart with the real helm binary, cached per set of values."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, require_tool

CHART = ROOT / "helm" / "edgemodel"
RELEASE = "em"
NAMESPACE = "edge-system"
#: Kubernetes release the rendered manifests are validated against (kubernetes-validate schemas).
KUBE_VERSION = "1.36.0"

#: Every documented switch, each rendered on its own on top of the defaults (docs/install.md lists them).
SWITCHES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-crds": {"crds": {"install": False, "installKopfPeering": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "no-kopf-peering-crds": {"crds": {"installKopfPeering": False}},
    "gpu-agent": {"agent": {"runtimeClassName": "nvidia", "image": {"variant": "gpu"},
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                          "limits": {"cpu": "4", "memory": "4Gi", "nvidia.com/gpu": 1}}},
                  "cloudAgent": {"enabled": True, "runtimeClassName": "nvidia-cloud"}},
    "watch-namespaces": {"operator": {"watchNamespaces": ["ml-a", "ml-b"]}},
    "single-operator": {"operator": {"replicas": 1, "podDisruptionBudget": {"enabled": False}}},
    "external-store": {"store": {"enabled": False, "externalUrl": "https://artifacts.example.com"}},
    "store-no-token": {"store": {"token": {"enabled": False}}},
    "store-existing-claim": {"store": {"persistence": {"existingClaim": "artifacts"}}},
    "agent-hostpath-cache": {"agent": {"cache": {"type": "hostPath"}}},
    "agent-ephemeral-cache": {"agent": {"cache": {"type": "ephemeral", "ephemeral": {"storageClassName": "local-path"}}}},
    "agent-token": {"agent": {"tokenSecret": "agent-token"}},
    "agent-continual": {"agent": {"continual": {"capture": {"enabled": True}, "upload": {"enabled": True}}}},
    "no-node-isolation": {"agent": {"nodeIsolation": False}},
    "no-agent": {"agent": {"enabled": False}},
    "cloud-agent": {"cloudAgent": {"enabled": True, "replicas": 2}},
    "split-mtls": {"cloudAgent": {"enabled": True, "split": {"port": 9443, "tlsSecret": "split-cloud"}},
                   "agent": {"splitTlsSecret": "split-edge"}},
    "signing-keys-given": {"signing": {"generate": False, "privateKey": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
                                       "publicKey": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"}},
    "signing-bring-your-own": {"signing": {"generate": False, "existingSecret": "fleet-key", "existingPublicKeyConfigMap": "fleet-pub"}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "network-policy-peers": {"networkPolicy": {"inferenceFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                               "storeFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}},
    "pod-monitor": {"metrics": {"podMonitor": {"enabled": True}}},
    "no-scrape-annotations": {"metrics": {"annotations": False}},
    "prometheus-rule": {"metrics": {"prometheusRule": {"enabled": True}}},
    "dashboards": {"dashboards": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Edge"}}},
    "prometheus-analysis": {"operator": {"prometheusUrl": "http://prometheus.monitoring:9090", "verbose": True}},
    "image-digests": {"operator": {"image": {"repository": "r/op", "tag": "1", "pullPolicy": "Always",
                                             "digest": "sha256:" + "a" * 64}},
                      "imagePullSecrets": [{"name": "regcred"}]},
}


#: Switches that exclude each other, linted on their own; every other switch is linted together (KITCHEN_SINK).
EXCLUSIVE = ("external-store", "signing-keys-given", "signing-bring-your-own", "no-crds", "no-agent",
             "single-operator", "pod-monitor", "no-network-policy")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def kitchen_sink() -> dict[str, Any]:
    """Every switch that can be on together, on together."""
    merged: dict[str, Any] = {}
    for name, values in SWITCHES.items():
        if name not in EXCLUSIVE:
            merged = _merge(merged, values)
    return merged


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; raise with its stderr when it fails and check is set."""
    exe = require_tool("helm")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@functools.lru_cache(maxsize=64)
def _render_cached(values_json: str) -> str:
    exe = require_tool("helm")
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, "--values", "-"]
    done = subprocess.run([str(exe), *args], input=values_json, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"helm template with {values_json} failed:\n{done.stderr}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return json.dumps([d for d in yaml.load_all(done.stdout, Loader=loader) if d])


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The manifests `helm template` renders with these values (a fresh copy each call)."""
    docs: list[dict[str, Any]] = json.loads(_render_cached(json.dumps(values or {}, sort_keys=True)))
    return docs


def render_error(values: dict[str, Any]) -> str:
    """stderr of a `helm template` that must fail."""
    exe = require_tool("helm")
    done = subprocess.run([str(exe), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           "--kube-version", KUBE_VERSION, "--values", "-"], input=json.dumps(values),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, f"helm template unexpectedly accepted {values}"
    return done.stderr


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of a kind (and name)."""
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {[d['metadata']['name'] for d in find(docs, kind)]}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for d in docs:
        kind = d.get("kind")
        if kind in {"Deployment", "DaemonSet", "StatefulSet"}:
            yield f"{kind}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif kind == "Job":
            yield f"Job/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def full(name: str) -> str:
    """Resource name with the release prefix."""
    return f"{RELEASE}-edgemodel-{name}"


def path_of(*parts: str) -> Path:
    return ROOT.joinpath(*parts)
