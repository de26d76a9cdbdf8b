"""Pure parts of the emulator: selectors, patches, JSONPath, schema semantics, pod env and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemodel_dev import cel, patching, podenv, schema, selectors
from edgemodel_dev.builtin_schemas import PatchMeta
from edgemodel_dev.errors import ApiError
from edgemodel_dev.jsonpath import find
from edgemodel_dev.tables import human_duration


def _obj(labels: dict[str, str]) -> dict:
    return {"metadata": {"name": "x", "labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("tier in (a, b),app", {"tier": "b", "app": "x"}, True),
        ("tier notin (a,b)", {"tier": "a"}, False),
        ("!app", {"tier": "a"}, True),
        ("!app", {"app": "a"}, False),
    ],
)
def test_label_selector_forms(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert selectors.labels_match(selectors.parse_label_selector(selector), _obj(labels)) is matches


def test_bad_label_selector_is_a_400() -> None:
    with pytest.raises(ApiError) as err:
        selectors.parse_label_selector("app in (a")
    assert err.value.code == 400


def test_field_selector_reads_dotted_paths() -> None:
    terms = selectors.parse_field_selector("metadata.name=x,spec.nodeName!=edge-1")
    assert selectors.fields_match(terms, {"metadata": {"name": "x"}, "spec": {"nodeName": "edge-2"}})
    assert not selectors.fields_match(terms, {"metadata": {"name": "x"}, "spec": {"nodeName": "edge-1"}})


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    result = patching.merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]})
    assert result == {"a": {"c": 2}, "l": [3]}


def test_json_patch_operations_and_failed_test() -> None:
    doc = {"metadata": {"resourceVersion": "5", "finalizers": ["a", "b"]}}
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
           {"op": "remove", "path": "/metadata/finalizers/0"},
           {"op": "add", "path": "/metadata/labels", "value": {"x/y": "1"}},
           {"op": "replace", "path": "/metadata/labels/x~1y", "value": "2"},
           {"op": "add", "path": "/metadata/finalizers/-", "value": "c"}]
    assert patching.json_patch(doc, ops) == {"metadata": {"resourceVersion": "5", "finalizers": ["b", "c"],
                                                          "labels": {"x/y": "2"}}}
    with pytest.raises(ApiError) as err:
        patching.json_patch(doc, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])
    assert err.value.code == 422


def test_strategic_merge_patch_merges_containers_and_env_by_name() -> None:
    pod = {"spec": {"containers": [
        {"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
        {"name": "b", "image": "2"}]}}
    patch = {"spec": {"containers": [
        {"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]},
        {"name": "b", "$patch": "delete"},
        {"name": "c", "image": "3"}]}}
    result = patching.strategic_merge_patch(pod, patch, PatchMeta.for_definition("io.k8s.api.core.v1.Pod"))
    assert [c["name"] for c in result["spec"]["containers"]] == ["a", "c"]
    assert result["spec"]["containers"][0]["env"] == [
        {"name": "X", "value": "1"}, {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]
    assert result["spec"]["containers"][0]["image"] == "1"


def test_strategic_merge_patch_directives() -> None:
    meta = PatchMeta.for_definition("io.k8s.api.core.v1.Pod")
    obj = {"metadata": {"finalizers": ["a", "b"]},
           "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeSelector": {"x": "1", "y": "2"}}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
             "spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                      "nodeSelector": {"$patch": "replace", "z": "3"}}}
    result = patching.strategic_merge_patch(obj, patch, meta)
    assert result["metadata"]["finalizers"] == ["b"]
    assert [c["name"] for c in result["spec"]["containers"]] == ["b", "a"]
    assert result["spec"]["nodeSelector"] == {"z": "3"}


def test_jsonpath_subset_of_printer_columns() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]},
           "metadata": {"labels": {"app.kubernetes.io/name": "em"}}, "items": [{"n": 1}, {"n": 2}]}
    assert find(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert find(obj, ".metadata.labels['app.kubernetes.io/name']") == ["em"]
    assert find(obj, ".items[*].n") == [1, 2]
    assert find(obj, ".items[-1].n") == [2]
    assert find(obj, ".status.missing") == []


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (119, "119s"), (200, "3m20s"), (3000, "50m"),
                                               (3 * 3600 + 240, "3h4m"), (20 * 3600, "20h"), (3 * 86400, "3d"),
                                               (30 * 86400, "30d")])
def test_human_duration_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 5},
                "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "unavailable": {"x-kubernetes-int-or-string": True, "default": "25%"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"},
                         "x-kubernetes-list-type": "set"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "nested": {"type": "object", "default": {}, "properties": {"deep": {"type": "boolean",
                                                                                     "default": True}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            },
        }
    },
}


def test_schema_defaults_prunes_and_keeps_preserved_fields() -> None:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
           "spec": {"size": 2, "unknown": 1, "free": {"any": {"thing": 1}}, "maybe": None, "mode": None}}
    pruned, causes = schema.process(obj, SCHEMA)
    assert causes == []
    assert pruned == ["spec.unknown"]
    assert obj["spec"] == {"size": 2, "mode": "a", "unavailable": "25%", "nested": {"deep": True},
                           "free": {"any": {"thing": 1}}, "maybe": None}


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({}, "spec.size", "FieldValueRequired"),
        ({"size": 9}, "spec.size", "FieldValueInvalid"),
        ({"size": "2"}, "spec.size", "FieldValueTypeInvalid"),
        ({"size": 1.5}, "spec.size", "FieldValueTypeInvalid"),
        ({"size": 1, "ratio": 0}, "spec.ratio", "FieldValueInvalid"),
        ({"size": 1, "mode": "c"}, "spec.mode", "FieldValueNotSupported"),
        ({"size": 1, "unavailable": True}, "spec.unavailable", "FieldValueTypeInvalid"),
        ({"size": 1, "tags": ["a", "b", "c"]}, "spec.tags", "FieldValueTooMany"),
        ({"size": 1, "tags": ["a", "a"]}, "spec.tags[1]", "FieldValueDuplicate"),
        ({"size": 1, "ports": [{"name": "x"}, {"name": "x"}]}, "spec.ports[1]", "FieldValueDuplicate"),
        ({"size": 1, "name": "ABC"}, "spec.name", "FieldValueInvalid"),
        ({"size": 1, "either": [1]}, "spec.either", "FieldValueInvalid"),
    ],
)
def test_schema_violations_name_the_field(spec: dict, field: str, reason: str) -> None:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec}
    _, causes = schema.process(obj, SCHEMA)
    assert (field, reason) in [(c["field"], c["reason"]) for c in causes], causes


def test_env_expansion_and_path_substitution() -> None:
    env = {"A": "1", "DIR": "/data/out"}
    assert podenv.expand("x-$(A)-$(MISSING)-$$(A)", env) == "x-1-$(MISSING)-$(A)"
    mounts = [podenv.Mount("/data", Path("/tmp/pod/vol")), podenv.Mount("/data/cache", Path("/tmp/c"))]
    assert podenv.substitute("--in=/data/x --cache /data/cache/y file:///data/z /database /datax",
                             mounts) == "--in=/tmp/pod/vol/x --cache /tmp/c/y file:///tmp/pod/vol/z /database /datax"


def test_quantities() -> None:
    assert podenv.parse_quantity("500m") == 0.5
    assert podenv.parse_quantity("1Gi") == 2**30
    assert podenv.parse_quantity("2") == 2


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        ("self.a + 1 == 3 && self.s.startsWith('ab') && 'b' in self.l", True),
        ("self.l.all(x, x.size() == 1) && self.l.exists_one(x, x == 'a')", True),
        ("self.l.map(x, x + '!').filter(y, y != 'a!') == ['b!']", True),
        ("has(self.missing) ? self.missing > 1 : self.a >= 2.0", True),
        ("self.m.exists(k, self.m[k] > 1) && size(self.m) == 2 && int('3') * 2 % 4 == 2", True),
        ("self.missing == 1 || true", True),
        ("!(self.a < 1) && -self.a == -2 && string(self.t) == 'true' && self.s.matches('^a.c$')", True),
        ("self.a > 5 ? false : self.s.endsWith('x')", False),
    ],
)
def test_cel_subset(rule: str, value: bool) -> None:
    env = {"self": {"a": 2, "s": "abc", "l": ["a", "b"], "m": {"x": 1, "y": 2}, "t": True}}
    assert cel.evaluate(cel.compile_rule(rule), env) is value


def test_cel_errors_and_unsupported_syntax() -> None:
    with pytest.raises(cel.EvalError):
        cel.evaluate(cel.compile_rule("self.missing == 1"), {"self": {}})
    with pytest.raises(cel.Unsupported):
        cel.compile_rule("self.a.b(")
    with pytest.raises(cel.Unsupported):
        cel.evaluate(cel.compile_rule("duration(self.d) > duration('1s')"), {"self": {"d": "2s"}})
