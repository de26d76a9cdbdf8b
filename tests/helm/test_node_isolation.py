"""The ValidatingAdmissionPolicy that limits each agent to the EdgeAgent of its own node, evaluated
with a real CEL implementation (cel-python) on admission requests shaped like the API server's."""

from __future__ import annotations

from typing import Any

import celpy
import pytest

from tests.helm.chart import full, one, render

AGENT_USER = "system:serviceaccount:edge-system:em-edgemodel-agent"
NODE_KEY = "authentication.kubernetes.io/node-name"


def _policy() -> dict[str, Any]:
    return one(render({}), "ValidatingAdmissionPolicy", full("agent-own-edgeagent"))["spec"]


def admit(op: str, name: str, *, user: str = AGENT_USER, node: str | None = "edge-1", sub: str = "",
          models: list[Any] | None = None, old_models: list[Any] | None = None) -> tuple[bool, str]:
    """(allowed, message) of the policy for one request, as the API server would evaluate it."""
    spec = _policy()
    extra = {NODE_KEY: [node]} if node else {}
    request = {"operation": op, "subResource": sub, "userInfo": {"username": user, "extra": extra}}
    obj = None if op == "DELETE" else {"metadata": {"name": name}, "spec": {"models": models or []}}
    old = None if op == "CREATE" else {"metadata": {"name": name}, "spec": {"models": old_models or []}}
    env = celpy.Environment()
    act: dict[str, Any] = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(obj),
                           "oldObject": celpy.json_to_cel(old)}

    def ev(expr: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expr)).evaluate(activation)

    if not all(ev(m["expression"], act) for m in spec["matchConditions"]):
        return True, "not matched"
    variables: dict[str, Any] = {}
    for var in spec["variables"]:
        variables[var["name"]] = ev(var["expression"], {**act, "variables": celpy.json_to_cel(variables)})
    act["variables"] = celpy.json_to_cel({k: str(v) for k, v in variables.items()})
    for rule in spec["validations"]:
        if not ev(rule["expression"], act):
            message = str(ev(rule["messageExpression"], act)) if "messageExpression" in rule else rule["message"]
            return False, message
    return True, ""


def test_policy_matches_edgeagents_and_status_and_binds_deny() -> None:
    spec = _policy()
    rules = spec["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["edgemodel.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
                      "resources": ["edgeagents", "edgeagents/status"]}]
    binding = one(render({}), "ValidatingAdmissionPolicyBinding", full("agent-own-edgeagent"))
    assert binding["spec"] == {"policyName": full("agent-own-edgeagent"), "validationActions": ["Deny"]}
    assert spec["failurePolicy"] == "Fail"


def test_agent_may_create_and_update_its_own() -> None:
    assert admit("CREATE", "edge-1") == (True, "")
    assert admit("UPDATE", "edge-1", sub="status") == (True, "")
    assert admit("UPDATE", "edge-1", models=[{"name": "m"}], old_models=[{"name": "m"}]) == (True, "")


@pytest.mark.parametrize("op", ["CREATE", "UPDATE"])
def test_agent_may_not_touch_another_nodes_edgeagent(op: str) -> None:
    allowed, message = admit(op, "edge-2", sub="status" if op == "UPDATE" else "")
    assert not allowed
    assert message == "the edge agent on node edge-1 may only write the EdgeAgent named edge-1, not edge-2"


def test_agent_may_not_change_assignments_or_delete() -> None:
    allowed, message = admit("UPDATE", "edge-1", models=[{"name": "evil"}], old_models=[])
    assert (allowed, message) == (False, "spec.models of an EdgeAgent is written only by the operator")
    assert admit("CREATE", "edge-1", models=[{"name": "m"}])[0] is False
    assert admit("DELETE", "edge-1") == (False, "edge agents never delete EdgeAgents")


def test_token_without_node_name_is_refused_with_the_fix() -> None:
    allowed, message = admit("CREATE", "edge-1", node=None)
    assert not allowed
    assert "Kubernetes >= 1.30" in message
    assert "agent.nodeIsolation=false" in message


def test_other_users_are_not_matched() -> None:
    assert admit("UPDATE", "edge-2", user="system:serviceaccount:edge-system:em-edgemodel-operator") == (True, "not matched")


SCENARIOS = [  # (operation, name, subresource, models, old models)
    ("CREATE", "edge-1", "", [], None),
    ("CREATE", "edge-1", "", [{"name": "m"}], None),
    ("CREATE", "edge-2", "", [], None),
    ("UPDATE", "edge-1", "", [], []),
    ("UPDATE", "edge-1", "", [{"name": "m"}], [{"name": "m"}]),
    ("UPDATE", "edge-1", "", [{"name": "evil"}], []),
    ("UPDATE", "edge-1", "", [], [{"name": "m"}]),
    ("UPDATE", "edge-1", "status", [{"name": "m"}], [{"name": "m"}]),
    ("UPDATE", "edge-2", "status", [], []),
    ("UPDATE", "edge-2", "", [], []),
]


@pytest.mark.parametrize(("op", "name", "sub", "models", "old_models"), SCENARIOS)
def test_the_emulator_admits_agents_exactly_as_the_chart_policy(op: str, name: str, sub: str, models: list[Any],
                                                                old_models: list[Any] | None) -> None:
    """edgemodel_dev.admission (the local cluster's per-agent rules) and the chart's CEL give the same verdict."""
    from edgemodel_dev.admission import Write, own_edgeagent

    allowed, message = admit(op, name, sub=sub, models=models, old_models=old_models)
    obj = {"metadata": {"name": name}, "spec": {"models": models}}
    old = None if old_models is None else {"metadata": {"name": name}, "spec": {"models": old_models}}
    denied = own_edgeagent("edge-1", Write(op, sub, name, obj, old))
    assert (denied is None) == allowed, (denied, message)
    if denied is not None:
        assert denied == message
