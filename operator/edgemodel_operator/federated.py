"""FederatedTraining, the pure part: names, the children (TLS Secrets, server Job + Service, one client Job per
node), node selection, and how the server's progress becomes status. No API calls here.

Children: ``<name>-fl-tls`` (server key, certificate, CA), ``<name>-fl-ca`` (the CA only, for the clients),
``<name>-fl-server`` (Job and Service), ``<name>-fl-<node>`` (client Job pinned to the node by nodeName).
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgemodel.api import GROUP, LabelSelector
from edgemodel.api.edgemodel import CLOUD_TIER_LABEL
from edgemodel.api.federated import (
    MAX_ROUND_RECORDS,
    FederatedPhase,
    FederatedTraining,
    FederatedTrainingSpec,
    FederatedTrainingStatus,
    RoundRecord,
)
from edgemodel_operator.constants import LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER, STORE_TOKEN_KEY
from edgemodel_operator.jobs import CONTAINER_SECURITY, converter_pod_security
from edgemodel_operator.settings import OperatorSettings

FEDERATEDTRAININGS = (GROUP, "v1alpha1", "federatedtrainings")
LABEL_TRAINING = f"{GROUP}/federated-training"
LABEL_NODE = f"{GROUP}/node"
ANNOTATION_TRAINED_BY = f"{GROUP}/trained-by"
"""On the EdgeModel a training fed: JSON provenance (training, uid, round, accuracy, model sha256)."""
SERVER_CONTAINER = "server"
CLIENT_CONTAINER = "client"
TLS_DIR = "/var/run/edgemodel/federated-tls"
CA_DIR = "/var/run/edgemodel/federated-ca"
SCRATCH_DIR = "/scratch"
EXIT_BAD_INPUT = 2
MAX_NAME = 63
EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
"""Only edge nodes (the ones the agent DaemonSet runs on: this label "true") train."""


class FederatedSettings(BaseSettings):
    """Operator settings of federated training (``EDGEMODEL_FEDERATED_*`` environment variables)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEMODEL_FEDERATED_", extra="ignore", use_attribute_docstrings=True
    )

    server_host: str = "{service}.{namespace}.svc"
    """Host the clients and the operator reach the aggregation server at ({service}, {namespace} filled in);
    127.0.0.1 in the emulated cluster, where every Pod shares the host's network."""
    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often the operator reads the server's /status while training."""
    event_every_rounds: int = Field(default=5, ge=1, le=1000)
    """An event every this many rounds (and at start and finish)."""
    client_backoff_limit: int = Field(default=2, ge=0, le=6)
    """Restarts of a client Pod that crashed (a client that found bad input, exit 2, is never restarted)."""
    cpu_limit: str = Field(default="1", pattern=r"^([0-9]+|[0-9]+m)$")
    """CPU limit of each server and client container."""
    memory_limit: str = "2Gi"
    """Memory limit of each server and client container."""


def _bounded(name: str, suffix: str) -> str:
    if len(name) + len(suffix) <= MAX_NAME:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(suffix) - 9].rstrip('-.')}-{digest}{suffix}"


def server_name(name: str) -> str:
    return _bounded(name, "-fl-server")


def tls_secret_name(name: str) -> str:
    return _bounded(name, "-fl-tls")


def ca_secret_name(name: str) -> str:
    return _bounded(name, "-fl-ca")


def client_name(name: str, node: str) -> str:
    """``<name>-fl-<node>``, hashed to stay a valid name of at most 63 characters."""
    full = f"{name}-fl-{node}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[: MAX_NAME - 11].rstrip('-.')}-{digest}"


def labels(name: str, component: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: component, LABEL_TRAINING: name}


def server_host(settings: FederatedSettings, name: str, namespace: str) -> str:
    return settings.server_host.format(service=server_name(name), namespace=namespace)


def tls_hosts(settings: FederatedSettings, name: str, namespace: str) -> list[str]:
    """Names on the server certificate: the configured host, the Service's DNS names, localhost."""
    service = server_name(name)
    return [
        server_host(settings, name, namespace),
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ]


def select_nodes(nodes: Sequence[Mapping[str, Any]], selector: LabelSelector) -> list[str]:
    """Names of the edge Nodes (node-role.kubernetes.io/edge=true) ``selector`` matches, cloud tier left out, sorted."""
    chosen = []
    for node in nodes:
        meta = node.get("metadata") or {}
        node_labels = meta.get("labels") or {}
        if (
            node_labels.get(EDGE_ROLE_LABEL) != "true"
            or node_labels.get(CLOUD_TIER_LABEL) == "cloud"
            or meta.get("deletionTimestamp")
        ):
            continue
        if selector.matches(node_labels):
            chosen.append(str(meta.get("name")))
    return sorted(chosen)


def spec_problems(spec: FederatedTrainingSpec, nodes: list[str], edgemodel_exists: bool | None) -> list[str]:
    """Bad input the API schema cannot see, each naming the field and the fix; empty when the training can start."""
    problems = []
    if not nodes:
        problems.append(
            "spec.selector: matches no edge node (only nodes labelled node-role.kubernetes.io/edge=true "
            "train, never the cloud tier); label the nodes that hold data or change the selector"
        )
    elif len(nodes) < spec.min_clients:
        problems.append(
            f"spec.minClients: {spec.min_clients} clients needed but the selector matches only "
            f"{len(nodes)} node(s) ({', '.join(nodes)}); lower minClients or select more nodes"
        )
    if spec.edge_model and edgemodel_exists is False:
        problems.append(
            f"spec.edgeModel: no EdgeModel {spec.edge_model!r} in this namespace; create it or fix the name"
        )
    return problems


def object_json(owner: Mapping[str, Any], spec: FederatedTrainingSpec) -> str:
    """``EDGEMODEL_FEDERATED_OBJECT``: metadata (name, namespace, uid) and the spec with defaults."""
    meta = owner.get("metadata") or {}
    obj = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "FederatedTraining",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "spec": spec.to_k8s(),
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _secret(name: str, data: dict[str, bytes], owner: Mapping[str, Any], component: str) -> dict[str, Any]:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "labels": labels(owner["metadata"]["name"], component)},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    kopf.adopt(secret, owner=kopf.Body(dict(owner)))  # type: ignore[arg-type]
    return secret


def build_secrets(owner: Mapping[str, Any], ca: bytes, cert: bytes, key: bytes) -> list[dict[str, Any]]:
    """The server's TLS Secret (key, certificate, CA) and the clients' CA-only Secret."""
    name = owner["metadata"]["name"]
    return [
        _secret(
            tls_secret_name(name), {"ca.pem": ca, "tls.crt": cert, "tls.key": key}, owner, "federated-server"
        ),
        _secret(ca_secret_name(name), {"ca.pem": ca}, owner, "federated-client"),
    ]


def _container(
    name: str,
    args: list[str],
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    image: str,
    settings: OperatorSettings,
    fed: FederatedSettings,
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.converter_image_pull_policy,
        "command": ["edgemodel"],
        "args": ["federated", *args],
        "env": env,
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": fed.cpu_limit, "memory": fed.memory_limit},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*mounts, {"name": "scratch", "mountPath": SCRATCH_DIR}],
        "securityContext": dict(CONTAINER_SECURITY),
    }


def _job(
    owner: Mapping[str, Any],
    job_name: str,
    component: str,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    settings: OperatorSettings,
    spec: FederatedTrainingSpec,
    backoff_limit: int,
    node: str | None = None,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta_labels = {**labels(owner["metadata"]["name"], component), **(extra_labels or {})}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": converter_pod_security(settings),
        "containers": [container],
        "volumes": [*volumes, {"name": "scratch", "emptyDir": {}}],
    }
    if node is not None:
        pod_spec["nodeName"] = node
        pod_spec["tolerations"] = [{"operator": "Exists"}]
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "labels": meta_labels},
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": spec.deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": container["name"],
                            "operator": "In",
                            "values": [EXIT_BAD_INPUT],
                        },
                    }
                ]
            },
            "template": {"metadata": {"labels": meta_labels}, "spec": pod_spec},
        },
    }
    kopf.adopt(job, owner=kopf.Body(dict(owner)))  # type: ignore[arg-type]
    return job


def _env(
    owner: Mapping[str, Any], spec: FederatedTrainingSpec, fed: FederatedSettings
) -> list[dict[str, Any]]:
    threads = max(
        1, int(float(fed.cpu_limit.removesuffix("m")) / (1000 if fed.cpu_limit.endswith("m") else 1))
    )
    return [
        {"name": "EDGEMODEL_FEDERATED_OBJECT", "value": object_json(owner, spec)},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        # torch's intra-op threads = the CPU limit (more only fight over the quota)
        {"name": "OMP_NUM_THREADS", "value": str(threads)},
    ]


def build_server_job(
    owner: Mapping[str, Any], spec: FederatedTrainingSpec, settings: OperatorSettings, fed: FederatedSettings
) -> dict[str, Any]:
    """The aggregation server: one Pod in the cloud (never on an edge node), the TLS Secret mounted."""
    name = owner["metadata"]["name"]
    env = _env(owner, spec, fed)
    if settings.store_token_secret:
        env.append(
            {
                "name": "EDGEMODEL_STORE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": settings.store_token_secret, "key": STORE_TOKEN_KEY}},
            }
        )
    container = _container(
        SERVER_CONTAINER,
        ["server", "--tls-dir", TLS_DIR, "--store-url", settings.store_url],
        env,
        [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
        settings.converter_image,
        settings,
        fed,
    )
    container["ports"] = [
        {"name": "flower", "containerPort": spec.port},
        {"name": "status", "containerPort": spec.port + 1},
    ]
    volumes = [{"name": "tls", "secret": {"secretName": tls_secret_name(name), "defaultMode": 0o440}}]
    job = _job(
        owner, server_name(name), "federated-server", container, volumes, settings, spec, backoff_limit=0
    )
    job["spec"]["template"]["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "node-role.kubernetes.io/edge", "operator": "DoesNotExist"}
                        ]
                    }
                ]
            }
        }
    }
    return job


def build_service(owner: Mapping[str, Any], spec: FederatedTrainingSpec) -> dict[str, Any]:
    """The Service the clients (gRPC) and the operator (/status) reach the server through."""
    name = owner["metadata"]["name"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": server_name(name), "labels": labels(name, "federated-server")},
        "spec": {
            "selector": labels(name, "federated-server"),
            "ports": [
                {"name": "flower", "port": spec.port, "targetPort": spec.port},
                {"name": "status", "port": spec.port + 1, "targetPort": spec.port + 1},
            ],
        },
    }
    kopf.adopt(service, owner=kopf.Body(dict(owner)))  # type: ignore[arg-type]
    return service


def build_client_job(
    owner: Mapping[str, Any],
    spec: FederatedTrainingSpec,
    node: str,
    server_address: str,
    settings: OperatorSettings,
    fed: FederatedSettings,
) -> dict[str, Any]:
    """One node's training client, pinned to it; spec.data.path's folder is mounted read-only from the node."""
    name = owner["metadata"]["name"]
    args = ["client", "--node", node, "--server", server_address, "--ca", f"{CA_DIR}/ca.pem"]
    mounts = [{"name": "ca", "mountPath": CA_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "ca", "secret": {"secretName": ca_secret_name(name), "defaultMode": 0o444}}
    ]
    if spec.data.path is not None:
        folder = posixpath.dirname(spec.data.path)
        args += ["--data", spec.data.path]
        mounts.append({"name": "data", "mountPath": folder, "readOnly": True})
        volumes.append({"name": "data", "hostPath": {"path": folder, "type": "DirectoryOrCreate"}})
    container = _container(
        CLIENT_CONTAINER, args, _env(owner, spec, fed), mounts, settings.converter_image, settings, fed
    )
    return _job(
        owner,
        client_name(name, node),
        "federated-client",
        container,
        volumes,
        settings,
        spec,
        backoff_limit=fed.client_backoff_limit,
        node=node,
        extra_labels={LABEL_NODE: node},
    )


def apply_progress(
    status: FederatedTrainingStatus, progress: Mapping[str, Any], nodes: int
) -> FederatedTrainingStatus:
    """The status with the server's ``/status`` rounds merged in (by round number, newest last, bounded)."""
    new = status.model_copy(deep=True)
    by_round = {r.round: r for r in new.rounds}
    for raw in progress.get("rounds") or []:
        record = RoundRecord.model_validate(raw)
        by_round[record.round] = record
    new.rounds = [by_round[k] for k in sorted(by_round)][-MAX_ROUND_RECORDS:]
    if new.rounds:
        last = new.rounds[-1]
        new.round = last.round
        new.accuracy = last.accuracy
        new.clients = f"{len(last.participating)}/{nodes}"
    return new


def terminated_message(
    pods: Sequence[Mapping[str, Any]], container: str
) -> tuple[int | None, dict[str, Any]]:
    """(exit code, parsed termination message) of the newest terminated ``container`` among ``pods``."""
    best: tuple[str, int | None, dict[str, Any]] | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if cs.get("name") != container or not term:
                continue
            try:
                message = json.loads(term.get("message") or "{}")
            except json.JSONDecodeError:
                message = {"message": (term.get("message") or "")[-500:]}
            if not isinstance(message, dict):
                message = {"message": str(message)}
            stamp = str(term.get("finishedAt") or "")
            if best is None or stamp >= best[0]:
                best = (stamp, term.get("exitCode"), message)
    return (best[1], best[2]) if best else (None, {})


def is_terminal(phase: FederatedPhase) -> bool:
    return phase in (FederatedPhase.SUCCEEDED, FederatedPhase.FAILED)


def parse(body: Mapping[str, Any]) -> FederatedTraining:
    """The object as the API model (raises pydantic's ValidationError on a bad spec)."""
    return FederatedTraining.model_validate(
        {
            k: body.get(k)
            for k in ("apiVersion", "kind", "metadata", "spec", "status")
            if body.get(k) is not None
        }
    )
