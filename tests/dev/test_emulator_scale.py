"""What keeps the emulator's work per change O(its watchers): watchers indexed by resource and object,
lists that look a name up, JSON copies, and one encoded frame shared by every watch of an event."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from edgemodel_dev import fastcopy
from edgemodel_dev.apiserver import ApiServer
from edgemodel_dev.controlplane import ControlPlane
from edgemodel_dev.selectors import parse_field_selector, parse_label_selector
from edgemodel_dev.store import Change, Store

LEASES = ("coordination.k8s.io", "leases")
PODS = ("", "pods")


def lease(name: str, node: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": {"node": node or name}},
            "spec": {"holderIdentity": name}}


def test_a_change_reaches_only_the_watchers_of_its_resource_and_object() -> None:
    store = Store()
    everything: list[str] = []
    leases: list[str] = []
    only_a: list[str] = []
    stop_all = store.subscribe(lambda c: everything.append(c.obj["metadata"]["name"]))
    stop_leases = store.subscribe(lambda c: leases.append(c.obj["metadata"]["name"]), LEASES)
    stop_a = store.subscribe(lambda c: only_a.append(c.type), LEASES, ("default", "a"))
    for name in ("a", "b"):
        store.create(LEASES, lease(name))
    store.create(PODS, lease("a"))  # same name, other resource
    store.update(LEASES, lease("a"))
    store.remove(LEASES, "default", "a")
    assert everything == ["a", "b", "a", "a", "a"]
    assert leases == ["a", "b", "a", "a"]
    assert only_a == ["ADDED", "MODIFIED", "DELETED"]
    for stop in (stop_a, stop_leases, stop_all, stop_a):  # unsubscribing twice is harmless
        stop()
    assert store._by_name == {}
    assert store._by_storage == {}
    store.create(LEASES, lease("c"))
    assert everything == ["a", "b", "a", "a", "a"], "nobody is called after unsubscribing"


def test_fastcopy_is_a_deep_copy_of_json() -> None:
    doc = {"a": [1, 2.5, {"b": None, "c": [True, "x"]}], "d": {"e": {"f": []}}}
    copied = fastcopy.deepcopy(doc)
    assert copied == copy.deepcopy(doc)
    copied["a"][2]["c"].append("y")
    copied["d"]["e"]["f"].append(1)
    assert doc == {"a": [1, 2.5, {"b": None, "c": [True, "x"]}], "d": {"e": {"f": []}}}


def _plane() -> ControlPlane:
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="edgemodel-scale-")), run_kubelet=False)
    plane._bootstrap()
    return plane


def test_lists_by_name_and_by_label_return_what_a_full_scan_would() -> None:
    plane = _plane()
    rt = plane.catalog.get("coordination.k8s.io", "v1", "leases")
    for i in range(50):
        plane.registry.create(rt, "default", lease(f"n{i:02d}", node=f"site-{i % 5}"))
    by_name = plane.registry.list_objects(rt, "default", fields=parse_field_selector("metadata.name=n07"))
    assert [o["metadata"]["name"] for o in by_name] == ["n07"]
    assert by_name[0]["apiVersion"] == "coordination.k8s.io/v1"
    assert plane.registry.list_objects(rt, "kube-system", fields=parse_field_selector("metadata.name=n07")) == []
    assert plane.registry.list_objects(rt, "default", fields=parse_field_selector("metadata.name=none")) == []
    labelled = plane.registry.list_objects(rt, "default", parse_label_selector("node=site-3"))
    assert [o["metadata"]["name"] for o in labelled] == [f"n{i:02d}" for i in range(3, 50, 5)]
    both = plane.registry.list_objects(rt, None, parse_label_selector("node=site-3"),
                                       parse_field_selector("metadata.name!=n03"))
    assert [o["metadata"]["name"] for o in both] == [f"n{i:02d}" for i in range(8, 50, 5)]


def test_an_event_is_encoded_once_for_every_watch_that_wants_it() -> None:
    plane = _plane()
    server = ApiServer(plane.registry)
    rt = plane.catalog.get("coordination.k8s.io", "v1", "leases")
    obj = plane.registry.create(rt, "default", lease("n1")).obj
    stored = plane.store.get(LEASES, "default", "n1")
    assert stored is not None
    change = Change(int(obj["metadata"]["resourceVersion"]), "ADDED", LEASES, stored, None)
    first = server._shared_frame(rt, change, "default", [])
    assert first is not None
    assert server._shared_frame(rt, change, None, []) is first, "the same bytes for the next watch"
    event = json.loads(first)
    assert event["type"] == "ADDED"
    assert event["object"]["apiVersion"] == "coordination.k8s.io/v1"
    assert event["object"]["metadata"]["name"] == "n1"
    assert server._shared_frame(rt, change, "other", []) == b"", "another namespace's watch gets nothing"
    assert server._shared_frame(rt, change, "default", parse_field_selector("metadata.name=n2")) == b""
    assert server._shared_frame(rt, change, "default", parse_field_selector("spec.holderIdentity=n1")) is None, \
        "other field selectors are decided per watch"
