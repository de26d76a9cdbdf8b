"""Pod Security Standard "restricted" for every pod the chart renders, plus our own rules
(read-only root file system, resources on every container)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import SWITCHES, pod_specs, render

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What the Pod Security Standard 'restricted' (and baseline) rejects in a pod spec."""
    out = []
    psc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(flag)
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol['name']}: {sorted(kinds - ALLOWED_VOLUMES)}")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        out.append("pod seccompProfile")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser", 1)) == 0:
            out.append(f"{name}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits", {}).get("memory"):
            out.append(f"{name}: resources")
    return out


@pytest.mark.parametrize("switch", [s for s in SWITCHES if s != "agent-hostpath-cache"])
def test_every_pod_is_restricted(switch: str) -> None:
    problems = {where: v for where, spec in pod_specs(render(SWITCHES[switch])) if (v := restricted_violations(spec))}
    assert not problems, problems


def test_hostpath_cache_is_the_only_exception_and_is_flagged() -> None:
    """agent.cache.type=hostPath needs a privileged namespace: exactly that volume breaks 'restricted'."""
    problems = {where: v for where, spec in pod_specs(render(SWITCHES["agent-hostpath-cache"]))
                if (v := restricted_violations(spec))}
    assert problems == {"DaemonSet/em-edgemodel-agent": ["volume cache: ['hostPath']"]}


def test_checker_catches_a_root_container() -> None:
    spec = {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": True}}]}
    found = restricted_violations(spec)
    assert {"c: runAsNonRoot", "c: runAsUser 0", "c: allowPrivilegeEscalation", "c: capabilities"} <= set(found)


def test_only_pods_that_talk_to_the_api_get_a_token() -> None:
    mounted = {where for where, spec in pod_specs(render({"cloudAgent": {"enabled": True}}))
               if spec.get("automountServiceAccountToken") is not False}
    assert mounted == {"Deployment/em-edgemodel-operator", "DaemonSet/em-edgemodel-agent",
                       "Deployment/em-edgemodel-cloud-agent", "Job/em-edgemodel-signing-keygen"}


def test_private_key_is_mounted_only_by_conversion_jobs() -> None:
    """No chart pod mounts the signing Secret (the operator mounts it into conversion Jobs only);
    agents mount only the public key ConfigMap."""
    for switch in ("defaults", "signing-keys-given", "signing-bring-your-own"):
        docs = render(SWITCHES[switch])
        secret = "fleet-key" if switch == "signing-bring-your-own" else "em-edgemodel-signing"
        for where, spec in pod_specs(docs):
            secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            env_secrets = {e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"] for e in c.get("env", [])
                           if "secretKeyRef" in e.get("valueFrom", {})}
            assert secret not in secrets | env_secrets, f"{switch}: {where} mounts the private key"
        agent = next(s for w, s in pod_specs(docs) if w == "DaemonSet/em-edgemodel-agent")
        cms = {v["configMap"]["name"] for v in agent["volumes"] if "configMap" in v}
        assert cms == {"fleet-pub" if switch == "signing-bring-your-own" else "em-edgemodel-signing-public"}
