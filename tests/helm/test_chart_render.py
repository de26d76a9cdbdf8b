"""helm lint --strict and helm template with the defaults and each documented switch; every
rendered manifest validated against the Kubernetes OpenAPI schemas (kubernetes-validate), the
project's CRDs and the prometheus-operator CRDs."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import CHART, KUBE_VERSION, SWITCHES, find, helm, render

ROOT_CRDS = CHART.parent.parent / "crds"


def _crd_schemas(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of the project's CRDs and the chart's kopf peering CRDs."""
    crds = [yaml.safe_load(p.read_text()) for p in sorted(ROOT_CRDS.glob("*.yaml"))]
    crds += [d for d in docs if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
    out = {}
    for crd in crds:
        for version in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return out


def _validate_monitoring(doc: dict[str, Any]) -> None:
    """Validate a monitoring.coreos.com object with the prometheus-operator models; unknown fields fail."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"])
    parsed = model.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_unset=True)
    dropped = _dropped_keys(doc, parsed)
    assert not dropped, f"{doc['kind']} {doc['metadata']['name']}: fields unknown to prometheus-operator: {dropped}"


def _dropped_keys(given: Any, kept: Any, path: str = "") -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}")
            else:
                out += _dropped_keys(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=False)) for p in _dropped_keys(a, b, f"{path}[{i}]")]
    return []


def test_lint_strict_with_defaults_and_every_switch(tmp_path: Any) -> None:
    """helm lint --strict passes for the defaults, for every compatible switch on at once, and for each
    switch that excludes others (values passed as files). test_rendered_manifests_validate renders each
    switch on its own."""
    from tests.helm.chart import EXCLUSIVE, kitchen_sink

    variants = {"defaults": {}, "kitchen-sink": kitchen_sink(), **{n: SWITCHES[n] for n in EXCLUSIVE}}
    failures = []
    for name, values in variants.items():
        values_file = tmp_path / f"{name}.yaml"
        values_file.write_text(json.dumps(values))
        proc = helm("lint", "--strict", str(CHART), "--values", str(values_file), "--kube-version", KUBE_VERSION,
                    check=False)
        if proc.returncode != 0:
            failures.append(f"{name}: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_rendered_manifests_validate(switch: str) -> None:
    """Every object validates strictly against Kubernetes' schemas or the CRD that defines it."""
    docs = render(SWITCHES[switch])
    assert docs, "nothing rendered"
    crd_schemas = _crd_schemas(render({}))
    checked: dict[str, int] = {}
    for doc in docs:
        api, kind = doc["apiVersion"], doc["kind"]
        where = f"{kind}/{doc['metadata']['name']}"
        if (api, kind) in crd_schemas:
            jsonschema.validate({k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")},
                                crd_schemas[(api, kind)])
        elif api == "monitoring.coreos.com/v1":
            _validate_monitoring(doc)
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}") from None
        checked[kind] = checked.get(kind, 0) + 1
    assert "Deployment" in checked or switch == "no-agent"


def test_every_object_has_app_kubernetes_io_labels() -> None:
    for switch, values in SWITCHES.items():
        for doc in render(values):
            labels = doc["metadata"].get("labels", {})
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                        "app.kubernetes.io/part-of", "app.kubernetes.io/version"):
                assert key in labels, f"{switch}: {doc['kind']}/{doc['metadata']['name']} lacks label {key}"


def test_defaults_install_every_component() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render({})}
    expected = {
        ("Deployment", "em-edgemodel-operator"), ("Deployment", "em-edgemodel-store"),
        ("DaemonSet", "em-edgemodel-agent"), ("Service", "em-edgemodel-agent"), ("Service", "em-edgemodel-store"),
        ("Service", "em-edgemodel-operator"), ("PodDisruptionBudget", "em-edgemodel-operator"),
        ("PersistentVolumeClaim", "em-edgemodel-store"), ("ValidatingAdmissionPolicy", "em-edgemodel-agent-own-edgeagent"),
        ("ValidatingAdmissionPolicyBinding", "em-edgemodel-agent-own-edgeagent"),
        ("CustomResourceDefinition", "edgemodels.edgemodel.io"), ("CustomResourceDefinition", "edgeagents.edgemodel.io"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"), ("ClusterKopfPeering", "edgemodel"),
        ("Job", "em-edgemodel-signing-keygen"), ("NetworkPolicy", "em-edgemodel-agent"),
        ("NetworkPolicy", "em-edgemodel-store"), ("NetworkPolicy", "em-edgemodel-operator"),
    }
    assert expected <= kinds, f"missing: {expected - kinds}"
    assert not {k for k, _ in kinds} & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [n for k, n in kinds if k == "Deployment" and "cloud-agent" in n]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"typo": 1}}, "additional properties 'typo' not allowed"),
        ({"agent": {"cache": {"type": "nfs"}}}, "agent/cache/type"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"store": {"enabled": False}}, "store.externalUrl is required"),
        ({"store": {"externalUrl": "https://x"}}, "set store.enabled=false"),
        ({"signing": {"generate": False}}, "signing: no private key"),
        ({"signing": {"generate": False, "privateKey": "not a key", "publicKey": "-----BEGIN PUBLIC KEY-----"}},
         "signing.privateKey must be a PEM private key"),
        ({"signing": {"existingSecret": "k"}}, "set signing.generate=false"),
        ({"operator": {"image": {"repository": "r", "tag": "", "pullPolicy": "Sometimes"}}}, "pullPolicy"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(values: dict[str, Any], message: str) -> None:
    from tests.helm.chart import render_error

    assert message in render_error(values)


def test_values_schema_is_strict_everywhere() -> None:
    """Every object in values.schema.json that lists properties forbids unknown keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False and path not in (
                    "/properties/podSecurityContext", "/properties/containerSecurityContext"):
                loose.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    assert not loose, f"objects without additionalProperties: false: {loose}"


def test_every_values_key_has_a_comment_and_an_example() -> None:
    """values.yaml: each key has a comment block with 'Example:' (keys inside an exemplified key are covered)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    covered_until_indent: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if covered_until_indent is not None and indent > covered_until_indent:
            continue
        covered_until_indent = None
        block = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j])
            j -= 1
        is_parent = stripped.endswith(":") and i + 1 < len(lines) and (
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent)
        has_example = any("Example:" in b for b in block)
        if has_example:
            covered_until_indent = indent
        elif not is_parent:
            missing.append(f"line {i + 1}: {stripped}")
    assert not missing, "values.yaml keys without a comment and example:\n" + "\n".join(missing)


def test_switches_are_documented_in_install_md() -> None:
    text = (CHART.parent.parent / "docs" / "install.md").read_text()
    for values in SWITCHES.values():
        for top, sub in values.items():
            keys = [f"{top}.{k}" for k in sub] if isinstance(sub, dict) else [top]
            for key in keys:
                assert f"`{key}" in text, f"docs/install.md does not document {key}"


def test_service_and_monitor_selectors_match_pods() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}, "cloudAgent": {"enabled": True}})
    pods = [(d["spec"]["template"]["metadata"]["labels"]) for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    for svc in find(docs, "Service"):
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= p.items() for p in pods), f"Service {svc['metadata']['name']} selects no pod"
    services = [s["metadata"]["labels"] for s in find(docs, "Service")]
    for sm in find(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        assert any(sel.items() <= s.items() for s in services), f"ServiceMonitor {sm['metadata']['name']} selects no Service"
