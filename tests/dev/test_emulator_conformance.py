"""Where the emulator once differed from a real API server (issue 15): each check states what the
real kube-apiserver answers. Self-contained on purpose: it uses only the edgemodel-dev pytest
plugin's fixtures and public API, so tests/foundation/test_distributions.py runs it against the dev
distribution installed from its wheel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from edgemodel_dev.cluster import LocalCluster

JSON = dict[str, Any]
CRD: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.conformance.example.com"},
    "spec": {"group": "conformance.example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}
WIDGETS = "/apis/conformance.example.com/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def call(cluster: LocalCluster, method: str, path: str, body: Any = None, *,
         content_type: str = "application/json", timeout: float = 30) -> requests.Response:
    data = body if isinstance(body, bytes | str | None) else json.dumps(body)
    return requests.request(method, cluster.url + path, data=data, timeout=timeout,
                            headers={"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": content_type})


def ok(response: requests.Response, code: int = 200) -> JSON:
    assert response.status_code == code, response.text
    body: JSON = response.json()
    return body


def events(cluster: LocalCluster, path: str) -> Iterator[JSON]:
    with requests.get(cluster.url + path, headers={"Authorization": f"Bearer {cluster.admin_token}"},
                      stream=True, timeout=(5, 20)) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            if line:
                yield json.loads(line)


def cm(name: str, **data: str) -> JSON:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data or {"k": "v"}}


@pytest.fixture
def widgets(kube_cluster: LocalCluster) -> LocalCluster:
    kube_cluster.create(CRD)
    return kube_cluster


# --- writes ------------------------------------------------------------------------------------
def test_put_of_a_custom_resource_without_resource_version_is_422(widgets: LocalCluster) -> None:
    created = ok(call(widgets, "POST", WIDGETS, {"apiVersion": "conformance.example.com/v1", "kind": "Widget",
                                                 "metadata": {"name": "w"}, "spec": {"size": 1}}), 201)
    unconditional = {k: v for k, v in created.items() if k != "metadata"} | {"metadata": {"name": "w"}}
    response = call(widgets, "PUT", f"{WIDGETS}/w", unconditional | {"spec": {"size": 2}})
    status = response.json()
    assert (response.status_code, status["reason"]) == (422, "Invalid"), response.text
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                                            "message": "Invalid value: 0x0: must be specified for an update"}]
    # with the resourceVersion the same PUT is fine; built-in kinds allow unconditional updates
    ok(call(widgets, "PUT", f"{WIDGETS}/w", created | {"spec": {"size": 2}}))
    ok(call(widgets, "POST", CONFIGMAPS, cm("c")), 201)
    assert ok(call(widgets, "PUT", f"{CONFIGMAPS}/c", cm("c", k="w")))["data"] == {"k": "w"}


def test_create_of_an_object_carrying_a_resource_version_is_an_error(widgets: LocalCluster) -> None:
    for path, body in ((CONFIGMAPS, cm("c")), (WIDGETS, {"apiVersion": "conformance.example.com/v1",
                                                           "kind": "Widget", "metadata": {"name": "w"}})):
        body["metadata"]["resourceVersion"] = "12"
        response = call(widgets, "POST", path, body)
        assert response.status_code == 500, response.text
        assert response.json()["reason"] == "InternalError"
        assert "resourceVersion should not be set on objects to be created" in response.json()["message"]
        assert call(widgets, "GET", f"{path}/{body['metadata']['name']}").status_code == 404


def test_generation_only_on_kinds_that_have_one(widgets: LocalCluster) -> None:
    config = ok(call(widgets, "POST", CONFIGMAPS, cm("c")), 201)
    assert "generation" not in config["metadata"]
    config = ok(call(widgets, "PUT", f"{CONFIGMAPS}/c", config | {"data": {"k": "other"}}))
    assert "generation" not in config["metadata"]
    secret = ok(call(widgets, "POST", "/api/v1/namespaces/default/secrets",
                     {"metadata": {"name": "s"}, "stringData": {"a": "b"}}), 201)
    assert "generation" not in secret["metadata"]
    widget = ok(call(widgets, "POST", WIDGETS, {"apiVersion": "conformance.example.com/v1", "kind": "Widget",
                                                "metadata": {"name": "w"}, "spec": {"size": 1}}), 201)
    assert widget["metadata"]["generation"] == 1
    widget = ok(call(widgets, "PATCH", f"{WIDGETS}/w", {"metadata": {"labels": {"a": "b"}}},
                     content_type="application/merge-patch+json"))
    assert widget["metadata"]["generation"] == 1, "metadata changes keep the generation"
    widget = ok(call(widgets, "PATCH", f"{WIDGETS}/w", {"spec": {"size": 2}},
                     content_type="application/merge-patch+json"))
    assert widget["metadata"]["generation"] == 2
    pod = ok(call(widgets, "POST", "/api/v1/namespaces/default/pods",
                  {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x",
                                                                        "command": ["sleep", "1"]}]}}), 201)
    assert pod["metadata"]["generation"] == 1


# --- watch and list at a resourceVersion ---------------------------------------------------------
def test_watch_older_than_its_kinds_history_is_410_expired(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "kube", history_size=5, kubelet=False) as cluster:
        first = ok(call(cluster, "POST", CONFIGMAPS, cm("c0")), 201)["metadata"]["resourceVersion"]
        secret = ok(call(cluster, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}}), 201)
        for index in range(1, 8):
            ok(call(cluster, "POST", CONFIGMAPS, cm(f"c{index}")), 201)
        got = list(events(cluster, f"{CONFIGMAPS}?watch=1&timeoutSeconds=2&resourceVersion={first}"))
        assert len(got) == 1, got
        assert got[0]["type"] == "ERROR"
        assert (got[0]["object"]["code"], got[0]["object"]["reason"]) == (410, "Expired")
        assert got[0]["object"]["message"].startswith(f"too old resource version: {first} (")
        # the history is per kind: Secrets changed little since, so a watch of them from there works
        got = list(events(cluster, f"/api/v1/namespaces/default/secrets?watch=1&timeoutSeconds=1"
                                   f"&resourceVersion={first}"))
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "s")]
        assert got[0]["object"]["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
        # the official client sees the 410 and can relist
        core = client.CoreV1Api(cluster.api_client())
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=first,
                                          timeout_seconds=2):
                pass
        assert err.value.status == 410


def test_pages_of_a_list_are_one_snapshot_with_one_resource_version(kube_cluster: LocalCluster) -> None:
    for index in range(6):
        ok(call(kube_cluster, "POST", CONFIGMAPS, cm(f"c{index}", k=f"v{index}")), 201)
    first = ok(call(kube_cluster, "GET", f"{CONFIGMAPS}?limit=2"))
    list_rv = first["metadata"]["resourceVersion"]
    assert first["metadata"]["remainingItemCount"] == 4
    # changes after the first page: none of them may show on the next pages
    ok(call(kube_cluster, "DELETE", f"{CONFIGMAPS}/c4"))
    ok(call(kube_cluster, "PATCH", f"{CONFIGMAPS}/c3", {"data": {"k": "changed"}},
            content_type="application/merge-patch+json"))
    ok(call(kube_cluster, "POST", CONFIGMAPS, cm("c2a")), 201)
    pages, token = [first], first["metadata"]["continue"]
    while token:
        page = ok(call(kube_cluster, "GET", f"{CONFIGMAPS}?limit=2&continue={token}"))
        pages.append(page)
        token = page["metadata"].get("continue")
    assert [p["metadata"]["resourceVersion"] for p in pages] == [list_rv] * 3
    items = [i for p in pages for i in p["items"]]
    assert [i["metadata"]["name"] for i in items] == [f"c{n}" for n in range(6)]
    assert [i["data"]["k"] for i in items] == [f"v{n}" for n in range(6)]
    # a fresh list sees the changes
    names = [i["metadata"]["name"] for i in ok(call(kube_cluster, "GET", CONFIGMAPS))["items"]]
    assert names == ["c0", "c1", "c2", "c2a", "c3", "c5"]


def test_continue_token_older_than_the_history_is_410_expired(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "kube", history_size=3, kubelet=False) as cluster:
        for index in range(3):
            ok(call(cluster, "POST", CONFIGMAPS, cm(f"c{index}")), 201)
        token = ok(call(cluster, "GET", f"{CONFIGMAPS}?limit=1"))["metadata"]["continue"]
        for index in range(3, 8):
            ok(call(cluster, "POST", CONFIGMAPS, cm(f"c{index}")), 201)
        response = call(cluster, "GET", f"{CONFIGMAPS}?limit=1&continue={token}")
        assert response.status_code == 410, response.text
        assert response.json()["reason"] == "Expired"
        assert "continue parameter is too old" in response.json()["message"]


def test_future_resource_version_waits_then_times_out(kube_cluster: LocalCluster) -> None:
    created = ok(call(kube_cluster, "POST", CONFIGMAPS, cm("c")), 201)
    future = int(created["metadata"]["resourceVersion"]) + 1000
    started = time.monotonic()
    response = call(kube_cluster, "GET", f"{CONFIGMAPS}/c?resourceVersion={future}")
    waited = time.monotonic() - started
    assert response.status_code == 504, response.text
    status = response.json()
    assert status["reason"] == "Timeout"
    assert status["message"].startswith(f"Timeout: Too large resource version: {future}, current: ")
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    assert 2.5 <= waited < 10, waited
    assert call(kube_cluster, "GET", f"{CONFIGMAPS}?resourceVersion={future}").status_code == 504
    got = list(events(kube_cluster, f"{CONFIGMAPS}?watch=1&resourceVersion={future}"))
    assert [(e["type"], e["object"]["code"]) for e in got] == [("ERROR", 504)]
    # a resourceVersion the server reaches while the read waits is served
    soon = int(created["metadata"]["resourceVersion"]) + 1
    writer = threading.Timer(0.5, lambda: call(kube_cluster, "POST", CONFIGMAPS, cm("d")))
    writer.start()
    try:
        assert ok(call(kube_cluster, "GET", f"{CONFIGMAPS}/c?resourceVersion={soon}"))["metadata"]["name"] == "c"
    finally:
        writer.join()


# --- server-side apply -----------------------------------------------------------------------------
def apply(cluster: LocalCluster, path: str, obj: JSON, manager: str | None = "ci",
          force: bool = False) -> requests.Response:
    query = "&".join(([f"fieldManager={manager}"] if manager else []) + (["force=true"] if force else []))
    return call(cluster, "PATCH", f"{path}?{query}", yaml.safe_dump(obj), content_type="application/apply-patch+yaml")


def managers(obj: JSON) -> dict[tuple[str, str], JSON]:
    return {(m["manager"], m["operation"]): m["fieldsV1"] for m in obj["metadata"].get("managedFields", [])}


def test_apply_needs_a_field_manager(widgets: LocalCluster) -> None:
    response = apply(widgets, f"{CONFIGMAPS}/c", cm("c"), manager=None)
    assert response.status_code == 422, response.text
    assert response.json()["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                                          "is required for apply patch")
    response = call(widgets, "PATCH", f"{CONFIGMAPS}/c?force=true", {"data": {}},
                    content_type="application/merge-patch+json")
    assert response.status_code == 422, response.text


def test_apply_removes_fields_its_manager_no_longer_applies_and_tracks_managed_fields(
        widgets: LocalCluster) -> None:
    obj = ok(apply(widgets, f"{CONFIGMAPS}/c", cm("c", a="1", b="2") | {"metadata": {
        "name": "c", "labels": {"team": "x", "tier": "y"}}}), 201)
    assert managers(obj) == {("ci", "Apply"): {"f:data": {"f:a": {}, "f:b": {}},
                                               "f:metadata": {"f:labels": {"f:team": {}, "f:tier": {}}}}}
    # another manager adds a field with a merge patch: it owns it (operation Update)
    obj = ok(call(widgets, "PATCH", f"{CONFIGMAPS}/c?fieldManager=editor", {"data": {"c": "3"}},
                  content_type="application/merge-patch+json"))
    assert managers(obj)[("editor", "Update")] == {"f:data": {"f:c": {}}}
    # the applier drops b and the tier label: both go; c (the editor's) stays
    obj = ok(apply(widgets, f"{CONFIGMAPS}/c", cm("c", a="1") | {"metadata": {"name": "c",
                                                                            "labels": {"team": "x"}}}))
    assert obj["data"] == {"a": "1", "c": "3"}
    assert obj["metadata"]["labels"] == {"team": "x"}
    assert managers(obj)[("ci", "Apply")] == {"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:team": {}}}}
    # applying the editor's field with another value conflicts, unless forced
    response = apply(widgets, f"{CONFIGMAPS}/c", cm("c", a="1", c="mine"))
    assert response.status_code == 409, response.text
    assert response.json()["reason"] == "Conflict"
    assert response.json()["message"] == 'Apply failed with 1 conflict: conflict with "editor" using v1: .data.c'
    obj = ok(apply(widgets, f"{CONFIGMAPS}/c", cm("c", a="1", c="mine"), force=True))
    assert obj["data"] == {"a": "1", "c": "mine"}
    assert ("editor", "Update") not in managers(obj), "the forced apply took the editor's only field"
    # the same value is no conflict: shared ownership
    ok(apply(widgets, f"{CONFIGMAPS}/c", cm("c", c="mine"), manager="other"))


def test_kubectl_server_side_apply_prunes_what_it_stopped_applying(widgets: LocalCluster, tmp_path: Path) -> None:
    manifest = {"apiVersion": "conformance.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w", "namespace": "default"}, "spec": {"size": 1, "color": "red"}}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(manifest))
    widgets.kubectl("apply", "--server-side", "-f", str(path))
    manifest["spec"] = {"size": 2}
    path.write_text(yaml.safe_dump(manifest))
    widgets.kubectl("apply", "--server-side", "-f", str(path))
    obj = json.loads(widgets.kubectl("get", "widget", "w", "-o", "json", "--show-managed-fields").stdout)
    assert obj["spec"] == {"size": 2}
    assert [(m["manager"], m["operation"], m["fieldsV1"]) for m in obj["metadata"]["managedFields"]] == [
        ("kubectl", "Apply", {"f:spec": {"f:size": {}}})]
    assert obj["metadata"]["generation"] == 2
