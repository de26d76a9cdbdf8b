"""The chart's RBAC grants exactly what the code uses.

One table (helm/edgemodel/files/rbac.yaml) lists every permission with its reason. Checked here:
1. the chart's ClusterRoles/Roles hold exactly the table's rules (defaults and watchNamespaces);
2. the operator's part equals ``edgemodel_operator.rbac.PERMISSIONS``, which the operator's
   end-to-end tests run the real operator under (emulator with exactly those rules, any 403
   fails), and covers every call found in its source; the agent and hook parts equal what their
   source uses, derived with `ast`: the operator's own API calls (``client.<verb>(Paths.<object>(...))``), the kopf handlers it
   registers (watching implies list+watch, kopf's finalizer/progress storage implies patch,
   ``kopf.event`` implies creating events, peering and CRD observation are kopf's own needs), the
   agent's calls (``client.<verb>(resource_path(...))``) and the install hook's CoreV1Api calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.helm.chart import CHART, SWITCHES, find, full, render

Perm = tuple[str, str, str]  # (apiGroup, resource, verb)
TABLE = yaml.safe_load((CHART / "files" / "rbac.yaml").read_text())


def table(who: str, scopes: set[str] | None = None) -> set[Perm]:
    return {(g, r, v) for rule in TABLE[who] if scopes is None or rule["scope"] in scopes
            for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def granted(rules: list[dict]) -> set[Perm]:
    out = set()
    for rule in rules:
        assert "*" not in rule["verbs"], f"wildcard rule {rule}"
        assert "*" not in rule["resources"], f"wildcard rule {rule}"
        assert not rule.get("resourceNames")
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _calls(folder: Path) -> list[tuple[str, ast.Call]]:
    """(method name, call) of every ``<x>.<method>(<first arg call>, ...)``."""
    out = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                out.append((node.func.attr, node))
    return out


OPERATOR_PATHS = {  # Paths.<fn> -> (group, resource, names one object)
    "edgemodel": ("edgemodel.io", "edgemodels", True), "edgemodel_status": ("edgemodel.io", "edgemodels/status", True),
    "edgeagents": ("edgemodel.io", "edgeagents", False), "edgeagent": ("edgemodel.io", "edgeagents", True),
    "jobs": ("batch", "jobs", False), "job": ("batch", "jobs", True), "pods": ("", "pods", False),
    "leases": ("coordination.k8s.io", "leases", False), "nodes": ("", "nodes", False),
}
CLIENT_VERBS = {"get": "get", "list": "list", "list_object": "list", "create": "create", "patch": "patch",
                "merge_patch": "patch", "put": "update", "delete": "delete", "watch": "watch", "stream": "watch"}


def operator_usage() -> set[Perm]:
    src = ROOT / "operator" / "edgemodel_operator"
    used: set[Perm] = set()
    for method, call in _calls(src):
        arg = call.args[0]
        if (method in CLIENT_VERBS and isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
                and isinstance(arg.func.value, ast.Name) and arg.func.value.id == "Paths"):
            group, resource, _named = OPERATOR_PATHS[arg.func.attr]
            used.add((group, resource, CLIENT_VERBS[method]))
    for path in sorted(src.glob("*.py")):  # ListWatch(client, Paths.<fn>(), ...): one list, then watches
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ListWatch"
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Call)
                    and isinstance(node.args[1].func, ast.Attribute)):
                group, resource, _named = OPERATOR_PATHS[node.args[1].func.attr]
                used |= {(group, resource, "list"), (group, resource, "watch")}
    main = (src / "main.py").read_text()
    tree = ast.parse(main)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = ast.unparse(node.func)
            if name.startswith(("kopf.on.", "kopf.daemon", "kopf.timer", "kopf.index")) and node.args:
                target = ast.unparse(node.args[0])
                if target == "*EDGEAGENTS":  # an index: kopf lists and watches, never writes
                    used |= {("edgemodel.io", "edgeagents", v) for v in ("list", "watch")}
                elif target == "*NODES":  # the Node labels index (what spec.selector selects on)
                    used |= {("", "nodes", v) for v in ("list", "watch")}
                elif target == "*EDGEMODELS":
                    # kopf lists+watches the resource and patches it (finalizer, progress annotations).
                    used |= {("edgemodel.io", "edgemodels", v) for v in ("list", "watch", "patch")}
                elif [ast.literal_eval(a) for a in node.args[:3]] == ["batch", "v1", "jobs"]:
                    used |= {("batch", "jobs", v) for v in ("list", "watch")}
    if any("kopf.event(" in p.read_text() for p in src.glob("*.py")):
        used.add(("", "events", "create"))
    if "peering.name" in main:
        # kopf peering: list/watch the peering object and patch its status with this replica's keep-alive.
        used |= {("kopf.dev", r, v) for r in ("clusterkopfpeerings", "kopfpeerings") for v in ("list", "watch", "patch")}
    # kopf's resource observer watches CRDs so that handlers start when their CRD appears.
    used |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    return used


def agent_usage() -> set[Perm]:
    src = ROOT / "edge_agent" / "control"
    consts = {"GROUP": "edgemodel.io", "VERSION": "v1alpha1", "PLURAL": "edgeagents"}
    used: set[Perm] = set()
    for method, call in _calls(src):
        arg = call.args[0]
        if method in CLIENT_VERBS and isinstance(arg, ast.Call) and ast.unparse(arg.func) == "resource_path":
            parts = [consts.get(ast.unparse(a), ast.literal_eval(a) if isinstance(a, ast.Constant) else None)
                     for a in arg.args]
            group, _version, plural = parts[:3]
            named = len(parts) > 3
            sub = parts[4] if len(parts) > 4 else None
            verb = CLIENT_VERBS[method]
            if verb == "get" and not named:
                verb = "list"
            used.add((str(group), f"{plural}/{sub}" if sub else str(plural), verb))
        elif method in CLIENT_VERBS and isinstance(arg, ast.Call) and ast.unparse(arg.func) == "lease_path":
            used.add(("coordination.k8s.io", "leases", CLIENT_VERBS[method]))
        elif method == "merge_patch" and ast.unparse(arg) == "self.object_path":
            used.add(("edgemodel.io", "edgeagents", "patch"))
        elif method == "get" and ast.unparse(arg) == "self.object_path":
            used.add(("edgemodel.io", "edgeagents", "get"))
    return used


def keygen_usage() -> set[Perm]:
    text = (CHART / "files" / "signing-keygen.py").read_text()
    used: set[Perm] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and node.attr.startswith(("read_namespaced_", "create_namespaced_")):
            verb = "get" if node.attr.startswith("read") else "create"
            kind = node.attr.split("namespaced_", 1)[1]
            used.add(("", {"secret": "secrets", "config_map": "configmaps"}[kind], verb))
    return used


def test_chart_grants_exactly_the_table() -> None:
    docs = render({})
    assert granted(find(docs, "ClusterRole", full("operator"))[0]["rules"]) == table(
        "operator", {"cluster", "workload", "cluster-wide-only"})
    assert granted(find(docs, "ClusterRole", full("agent"))[0]["rules"]) == table("agent", {"cluster"})
    for who, role in (("operator", full("operator-leases")), ("agent", full("agent-lease"))):
        [lease_role] = find(docs, "Role", role)
        assert lease_role["metadata"]["namespace"] == "edge-system"
        assert granted(lease_role["rules"]) == table(who, {"release"}) == {
            ("coordination.k8s.io", "leases", v) for v in
            (("list", "watch") if who == "operator" else ("get", "create", "update"))}
        [binding] = find(docs, "RoleBinding", role)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": full(who), "namespace": "edge-system"}]
    keygen_roles = [r for r in find(docs, "Role") if r["metadata"]["name"] == full("signing-keygen")]
    assert [granted(r["rules"]) for r in keygen_roles] == [table("signingKeygen")]
    scoped = render(SWITCHES["watch-namespaces"])
    assert granted(find(scoped, "ClusterRole", full("operator"))[0]["rules"]) == table("operator", {"cluster"})
    for role in find(scoped, "Role", full("operator")):
        assert granted(role["rules"]) == table("operator", {"workload", "namespaced-only"})
    assert {r["metadata"]["namespace"] for r in find(scoped, "Role", full("operator"))} == {"ml-a", "ml-b"}
    bindings = {b["metadata"]["name"]: b for b in find(docs, "ClusterRoleBinding")}
    assert bindings[full("operator")]["subjects"] == [{"kind": "ServiceAccount", "name": full("operator"), "namespace": "edge-system"}]
    assert bindings[full("agent")]["subjects"] == [{"kind": "ServiceAccount", "name": full("agent"), "namespace": "edge-system"}]


def test_operator_table_is_the_operators_declared_permissions() -> None:
    """The chart's table equals edgemodel_operator.rbac.PERMISSIONS, which the operator's e2e tests run the
    real operator under (API emulator with exactly those rules; any 403 fails them), scopes included."""
    from edgemodel_operator.rbac import PERMISSIONS

    declared = {(p.api_group, p.resource, v) for p in PERMISSIONS for v in p.verbs}
    assert table("operator") == declared
    scopes = {"cluster": {"cluster"}, "workload": {"workload"}, "peering": {"cluster-wide-only", "namespaced-only"},
              "release": {"release"}}
    for p in PERMISSIONS:
        rule = next(r for r in TABLE["operator"] if p.resource in r["resources"] and p.api_group in r["apiGroups"])
        assert rule["scope"] in scopes[p.scope], (p, rule["scope"])


def test_operator_source_calls_are_all_granted() -> None:
    """Every API call in the operator's source and every kopf handler it registers is covered by the table."""
    used, allowed = operator_usage(), table("operator")
    assert used - allowed == set(), f"the operator uses permissions the chart does not grant: {sorted(used - allowed)}"


def test_agent_code_uses_exactly_the_table() -> None:
    used, allowed = agent_usage(), table("agent")
    assert used - allowed == set(), f"the agent uses permissions the chart does not grant: {sorted(used - allowed)}"
    assert allowed - used == set(), f"the chart grants permissions the agent never uses: {sorted(allowed - used)}"


def test_keygen_hook_uses_exactly_the_table() -> None:
    assert keygen_usage() == table("signingKeygen")


def test_every_rule_says_why() -> None:
    for who, rules in TABLE.items():
        for rule in rules:
            assert len(rule.get("why", "")) > 20, f"{who}: {rule} needs a reason"
