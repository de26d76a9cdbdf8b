"""Chart unit tests for the important switches: what each one changes in the rendered objects."""

from __future__ import annotations

import base64
import json

from tests.helm.chart import SWITCHES, find, full, one, render, render_error


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_operator_two_replicas_spread_with_liveness_probe_and_pdb() -> None:
    docs = render({})
    dep = one(docs, "Deployment", full("operator"))
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "healthz": 8081}
    assert spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert one(docs, "PodDisruptionBudget", full("operator"))["spec"]["minAvailable"] == 1
    env = _env(c)
    assert env["EDGEMODEL_OPERATOR_PEERING"] == "edgemodel"
    assert env["EDGEMODEL_OPERATOR_STORE_URL"] == "http://em-edgemodel-store.edge-system.svc:8081"
    assert env["EDGEMODEL_OPERATOR_SIGNING_KEY_SECRET"] == full("signing")
    assert env["EDGEMODEL_OPERATOR_STORE_TOKEN_SECRET"] == full("store-token")
    assert env["EDGEMODEL_OPERATOR_CONVERTER_IMAGE"] == "ghcr.io/edgemodel/converter:0.1.0"
    assert json.loads(env["EDGEMODEL_OPERATOR_NAMESPACES"]) == []
    assert one(docs, "ClusterKopfPeering", "edgemodel")["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_single_replica_drops_pdb() -> None:
    docs = render(SWITCHES["single-operator"])
    assert one(docs, "Deployment", full("operator"))["spec"]["replicas"] == 1
    assert not find(docs, "PodDisruptionBudget")


def test_crds_switches() -> None:
    names = {"edgemodels.edgemodel.io", "edgeagents.edgemodel.io", "federatedtrainings.edgemodel.io",
             "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    kept = find(render({}), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in kept} == names
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in kept)
    assert all("annotations" not in c["metadata"] for c in find(render(SWITCHES["crds-not-kept"]), "CustomResourceDefinition"))
    assert not find(render(SWITCHES["no-crds"]), "CustomResourceDefinition")


def test_watch_namespaces_use_roles_and_copy_secrets() -> None:
    docs = render(SWITCHES["watch-namespaces"])
    env = _env(one(docs, "Deployment", full("operator"))["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(env["EDGEMODEL_OPERATOR_NAMESPACES"]) == ["ml-a", "ml-b"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(docs, "Role")}
    assert {("ml-a", full("operator")), ("ml-b", full("operator"))} <= roles
    cluster_rules = one(docs, "ClusterRole", full("operator"))["rules"]
    assert not [r for r in cluster_rules if "edgemodels" in r["resources"] or "jobs" in r["resources"]]
    assert {(p["metadata"]["namespace"], p["kind"]) for p in find(docs, "KopfPeering")} == {("ml-a", "KopfPeering"), ("ml-b", "KopfPeering")}
    tokens = {s["metadata"]["namespace"] for s in find(docs, "Secret", full("store-token"))}
    assert tokens == {"edge-system", "ml-a", "ml-b"}
    keygen = one(docs, "Job", full("signing-keygen"))
    kenv = _env(keygen["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(kenv["EDGEMODEL_KEYGEN_JOB_NAMESPACES"]) == ["edge-system", "ml-a", "ml-b"]


def test_external_store_removes_the_store_and_points_the_operator_at_it() -> None:
    docs = render(SWITCHES["external-store"])
    assert not find(docs, "Deployment", full("store"))
    assert not find(docs, "PersistentVolumeClaim")
    env = _env(one(docs, "Deployment", full("operator"))["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEMODEL_OPERATOR_STORE_URL"] == "https://artifacts.example.com"


def test_store_runs_the_documented_command_on_its_pvc() -> None:
    docs = render({})
    spec = one(docs, "Deployment", full("store"))["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args == ["store", "--root", "/data", "--host", "0.0.0.0", "--port", "8081", "--max-upload-bytes", "8589934592",
                    "--token-file", "/var/run/edgemodel/store-token/token"]
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}["data"] == full("store")
    assert one(docs, "PersistentVolumeClaim", full("store"))["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    token = base64.b64decode(one(docs, "Secret", full("store-token"))["data"]["token"]).decode()
    assert len(token) == 40
    no_token = one(render(SWITCHES["store-no-token"]), "Deployment", full("store"))
    assert "--token-file" not in no_token["spec"]["template"]["spec"]["containers"][0]["args"]
    claim = one(render(SWITCHES["store-existing-claim"]), "Deployment", full("store"))["spec"]["template"]["spec"]["volumes"][0]
    assert claim["persistentVolumeClaim"]["claimName"] == "artifacts"


def test_agent_daemonset_on_edge_nodes_with_node_name_and_public_key() -> None:
    ds = one(render({}), "DaemonSet", full("agent"))
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/edge": "true"}
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    c = spec["containers"][0]
    node = next(e for e in c["env"] if e["name"] == "NODE_NAME")
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert c["args"] == ["agent", "--in-cluster"]
    env = _env(c)
    assert env["EDGEMODEL_AGENT_PUBLIC_KEY"] == "/etc/edgemodel/signing/public.pem"
    assert env["EDGEMODEL_AGENT_HOST"] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert spec["serviceAccountName"] == full("agent")
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["cache"]["emptyDir"]["sizeLimit"] == "4Gi"
    assert vols["public-key"]["configMap"]["name"] == full("signing-public")
    svc = one(render({}), "Service", full("agent"))
    assert svc["spec"]["internalTrafficPolicy"] == "Local"


def test_agent_cache_variants() -> None:
    host = one(render(SWITCHES["agent-hostpath-cache"]), "DaemonSet", full("agent"))["spec"]["template"]["spec"]["volumes"]
    assert host[0]["hostPath"] == {"path": "/var/lib/edgemodel-agent", "type": "DirectoryOrCreate"}
    eph = one(render(SWITCHES["agent-ephemeral-cache"]), "DaemonSet", full("agent"))["spec"]["template"]["spec"]["volumes"]
    assert eph[0]["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "local-path"


def test_agent_token_secret_is_mounted_and_passed() -> None:
    spec = one(render(SWITCHES["agent-token"]), "DaemonSet", full("agent"))["spec"]["template"]["spec"]
    assert _env(spec["containers"][0])["EDGEMODEL_AGENT_TOKEN_FILE"] == "/var/run/edgemodel/agent-token/token"
    assert {v["name"]: v for v in spec["volumes"]}["token"]["secret"]["secretName"] == "agent-token"


def test_cloud_agent_avoids_edge_nodes_one_per_node() -> None:
    docs = render(SWITCHES["cloud-agent"])
    dep = one(docs, "Deployment", full("cloud-agent"))
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "node-role.kubernetes.io/edge", "operator": "NotIn", "values": ["true"]}]}]
    assert spec["nodeSelector"] == {"edgemodel.io/tier": "cloud"}, "nodes an admin labelled for tails"
    assert json.loads(_env(spec["containers"][0])["EDGEMODEL_AGENT_LABELS"]) == {"edgemodel.io/tier": "cloud"}
    assert one(docs, "Service", full("cloud-agent"))


def test_split_port_and_mtls_secrets_reach_the_agents() -> None:
    """The cloud agents serve tails on the split port (Service, NetworkPolicy) with their Secret; the edge DaemonSet
    mounts its client identity; both become EDGEMODEL_AGENT_SPLIT_* settings."""
    docs = render(SWITCHES["split-mtls"])
    cloud = one(docs, "Deployment", full("cloud-agent"))["spec"]["template"]["spec"]
    edge = one(docs, "DaemonSet", full("agent"))["spec"]["template"]["spec"]
    tls_env = {"EDGEMODEL_AGENT_SPLIT_TLS_CA": "/etc/edgemodel/split-tls/ca.crt",
               "EDGEMODEL_AGENT_SPLIT_TLS_CERT": "/etc/edgemodel/split-tls/tls.crt",
               "EDGEMODEL_AGENT_SPLIT_TLS_KEY": "/etc/edgemodel/split-tls/tls.key"}
    for spec, secret in ((cloud, "split-cloud"), (edge, "split-edge")):
        env = _env(spec["containers"][0])
        assert {k: env.get(k) for k in tls_env} == tls_env
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["split-tls"]["secret"]["secretName"] == secret
        assert {"name": "split-tls", "mountPath": "/etc/edgemodel/split-tls", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert _env(cloud["containers"][0])["EDGEMODEL_AGENT_SPLIT_PORT"] == "9443"
    assert "EDGEMODEL_AGENT_SPLIT_PORT" not in _env(edge["containers"][0])
    assert {"name": "split", "containerPort": 9443, "protocol": "TCP"} in cloud["containers"][0]["ports"]
    ports = {p["name"]: p for p in one(docs, "Service", full("cloud-agent"))["spec"]["ports"]}
    assert (ports["split"]["port"], ports["split"]["targetPort"]) == (9443, "split")
    policy = one(docs, "NetworkPolicy", full("agent"))
    assert {"port": "split", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]
    # Without a cloud agent nothing of it renders; the default cloud agent serves tails on 8443 in plain HTTP.
    assert "split-tls" not in {v["name"] for v in one(render({}), "DaemonSet", full("agent"))["spec"]["template"]["spec"]["volumes"]}
    default_cloud = one(render(SWITCHES["cloud-agent"]), "Deployment", full("cloud-agent"))["spec"]["template"]["spec"]
    assert _env(default_cloud["containers"][0])["EDGEMODEL_AGENT_SPLIT_PORT"] == "8443"
    assert "EDGEMODEL_AGENT_SPLIT_TLS_CA" not in _env(default_cloud["containers"][0])


def test_node_isolation_switch() -> None:
    assert find(render({}), "ValidatingAdmissionPolicy")
    assert not find(render(SWITCHES["no-node-isolation"]), "ValidatingAdmissionPolicy")
    assert not find(render(SWITCHES["no-agent"]), "DaemonSet")


def test_signing_variants() -> None:
    given = render(SWITCHES["signing-keys-given"])
    assert not find(given, "Job")
    secret = one(given, "Secret", full("signing"))
    assert base64.b64decode(secret["data"]["private.pem"]).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert one(given, "ConfigMap", full("signing-public"))["data"]["public.pem"].startswith("-----BEGIN PUBLIC KEY-----")
    byo = render(SWITCHES["signing-bring-your-own"])
    assert not find(byo, "Secret", full("signing"))
    assert not find(byo, "Job")
    env = _env(one(byo, "Deployment", full("operator"))["spec"]["template"]["spec"]["containers"][0])
    assert env["EDGEMODEL_OPERATOR_SIGNING_KEY_SECRET"] == "fleet-key"
    gen = render({})
    job = one(gen, "Job", full("signing-keygen"))
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == full("signing-keygen")
    script = one(gen, "ConfigMap", full("signing-keygen"))["data"]["signing-keygen.py"]
    assert "def ensure_keys" in script


def test_scrape_annotations_monitors_and_rules() -> None:
    ann = one(render({}), "DaemonSet", full("agent"))["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    off = one(render(SWITCHES["no-scrape-annotations"]), "DaemonSet", full("agent"))["spec"]["template"]["metadata"]
    assert not off.get("annotations")
    sm_docs = render(SWITCHES["service-monitor"])
    sms = find(sm_docs, "ServiceMonitor")
    assert {s["metadata"]["name"] for s in sms} == {full("operator"), full("agent")}
    assert all(s["metadata"]["labels"]["release"] == "kps" for s in sms)
    assert "annotations" not in one(sm_docs, "DaemonSet", full("agent"))["spec"]["template"]["metadata"] or \
        "prometheus.io/scrape" not in one(sm_docs, "DaemonSet", full("agent"))["spec"]["template"]["metadata"]["annotations"]
    relabel = sms[0]["spec"]["endpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in relabel
    pms = find(render(SWITCHES["pod-monitor"]), "PodMonitor")
    assert {p["metadata"]["name"] for p in pms} == {full("operator"), full("agent")}
    # The agents' and the operator's per-model series carry the EdgeModel's `namespace`: it must win over the pod's.
    assert all(e["honorLabels"] is True for s in sms for e in s["spec"]["endpoints"])
    assert all(e["honorLabels"] is True for p in pms for e in p["spec"]["podMetricsEndpoints"])
    rule = one(render(SWITCHES["prometheus-rule"]), "PrometheusRule", "em-edgemodel")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"EdgemodelAgentDown", "EdgemodelModelNotReady", "EdgemodelP95OverBudget", "EdgemodelRolloutStuck",
            "EdgemodelConversionFailing"} <= alerts


def test_dashboards_as_labelled_configmaps() -> None:
    cms = [c for c in find(render(SWITCHES["dashboards"]), "ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert sorted(c["metadata"]["name"].rsplit("-dashboard-", 1)[1] for c in cms) == [
        "edgemodel-conversion", "edgemodel-federated", "edgemodel-fleet", "edgemodel-latency"]
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Edge"}
        (content,) = cm["data"].values()
        assert json.loads(content)["tags"] == ["edgemodel"]
    assert not [c for c in find(render({}), "ConfigMap") if "dashboard" in c["metadata"]["name"]]


def test_network_policies() -> None:
    docs = render({})
    store = one(docs, "NetworkPolicy", full("store"))
    peers = store["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/managed-by": "edgemodel-operator", "app.kubernetes.io/component": "converter"}}} in peers
    agent = one(docs, "NetworkPolicy", full("agent"))
    assert "from" not in agent["spec"]["ingress"][0], "inference is open by default"
    peers2 = one(render(SWITCHES["network-policy-peers"]), "NetworkPolicy", full("agent"))["spec"]["ingress"][0]["from"]
    assert {"ipBlock": {"cidr": "10.0.0.0/8"}} in peers2
    assert not find(render(SWITCHES["no-network-policy"]), "NetworkPolicy")


def test_image_digest_and_pull_secrets() -> None:
    docs = render(SWITCHES["image-digests"])
    spec = one(docs, "Deployment", full("operator"))["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "r/op:1@sha256:" + "a" * 64
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_kopf_peering_crds_have_their_own_switch() -> None:
    peering = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    ours = {"edgemodels.edgemodel.io", "edgeagents.edgemodel.io", "federatedtrainings.edgemodel.io"}
    names = {c["metadata"]["name"] for c in find(render({}), "CustomResourceDefinition")}
    assert names == ours | peering
    without = {c["metadata"]["name"] for c in find(render(SWITCHES["no-kopf-peering-crds"]), "CustomResourceDefinition")}
    assert without == ours, "another kopf operator may own the peering CRDs"
    only = {c["metadata"]["name"] for c in find(render({"crds": {"install": False}}), "CustomResourceDefinition")}
    assert only == peering, "crds.install=false leaves our CRDs to you, not kopf's"


def test_gpu_values_for_the_agent() -> None:
    docs = render(SWITCHES["gpu-agent"])
    pod = one(docs, "DaemonSet", full("agent"))["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    (agent,) = pod["containers"]
    assert agent["image"].split(":")[-1].endswith("-gpu"), agent["image"]
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 1
    cloud = one(docs, "Deployment", full("cloud-agent"))["spec"]["template"]["spec"]
    assert cloud["runtimeClassName"] == "nvidia-cloud"
    assert cloud["containers"][0]["image"] == agent["image"]
    assert cloud["nodeSelector"] == {"edgemodel.io/tier": "cloud"}, "cloud agents run where the admin's label says"
    default = one(render({}), "DaemonSet", full("agent"))["spec"]["template"]["spec"]
    assert "runtimeClassName" not in default
    assert not default["containers"][0]["image"].endswith("-gpu")
    bad = render_error({"agent": {"image": {"variant": "GPU!"}}})
    assert "variant" in bad
