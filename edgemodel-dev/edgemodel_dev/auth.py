"""Optional bearer-token authentication and RBAC-like authorization.

A token maps to an :class:`Identity` with :class:`Rule` s in the shape of RBAC PolicyRules. When
the server has no tokens configured, every request is allowed (as the admin).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgemodel_dev import errors

JSON = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """Allows ``verbs`` on ``resources`` (``edgeagents`` or ``edgeagents/status``) of ``api_groups``.

    ``resource_names`` restricts the rule to those object names (for list/watch: a
    ``fieldSelector=metadata.name=<name>``; for create: the name in the body); ``namespaces``
    to those namespaces (what a Role and its RoleBinding in a namespace give).
    """

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    def allows(self, verb: str, group: str, resource: str, name: str | None, namespace: str | None = None) -> bool:
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        if self.namespaces and namespace not in self.namespaces:
            return False
        if "*" not in self.api_groups and group not in self.api_groups:
            return False
        if "*" not in self.resources and resource not in self.resources:
            return False
        if self.resource_names:
            return name is not None and name in self.resource_names
        return True


@dataclass(frozen=True)
class Identity:
    name: str
    groups: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    node: str | None = None
    """The node of an agent's bound token (user extra authentication.kubernetes.io/node-name); see admission."""

    def allows(self, verb: str, group: str, resource: str, name: str | None, namespace: str | None = None) -> bool:
        return any(rule.allows(verb, group, resource, name, namespace) for rule in self.rules)


ADMIN = Identity("admin", ("system:masters",), (Rule(("*",)),))
READ_VERBS = ("get", "list", "watch")


def agent_identity(node: str, lease_namespace: str = "default") -> Identity:
    """What an edge agent may do: its own EdgeAgent (and status) and its own heartbeat Lease in
    ``lease_namespace``, nothing else.

    Its Node is not readable: the operator selects on Node labels, the agent needs none of them.
    What it may write there (never spec.models) is ``admission.CHECKS``, the chart's policy.
    """
    own = (node,)
    return Identity(
        f"system:edgeagent:{node}",
        ("edgemodel:agents",),
        (
            Rule(("get", "list", "watch", "patch", "update", "create"), ("edgemodel.io",), ("edgeagents",), own),
            Rule(("get", "patch", "update"), ("edgemodel.io",), ("edgeagents/status",), own),
            lease_rule(node, lease_namespace),
        ),
        node=node,
    )


def lease_rule(node: str, namespace: str) -> Rule:
    """An agent renews only the Lease named after its node, in the product's namespace."""
    return Rule(("get", "create", "update", "patch"), ("coordination.k8s.io",), ("leases",), (node,), namespaces=(namespace,))


class TokenAuth:
    """Token -> identity. Empty means authentication is off (everyone is the admin)."""

    def __init__(self, tokens: dict[str, Identity] | None = None) -> None:
        self.tokens: dict[str, Identity] = dict(tokens or {})

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def add(self, identity: Identity, token: str | None = None) -> str:
        token = token or secrets.token_urlsafe(24)
        self.tokens[token] = identity
        return token

    def identify(self, header: str | None) -> Identity:
        if not self.enabled:
            return ADMIN
        if not header or not header.lower().startswith("bearer "):
            raise errors.unauthorized()
        identity = self.tokens.get(header[7:].strip())
        if identity is None:
            raise errors.unauthorized()
        return identity


def authorize(
    identity: Identity,
    verb: str,
    group: str,
    resource: str,
    namespace: str | None,
    name: str | None,
) -> None:
    """Raise 403 Forbidden (with the message kubectl shows) unless the identity may do this."""
    if identity.allows(verb, group, resource, name, namespace):
        return
    base, _, sub = resource.partition("/")
    what = f'{base}.{group} "{name}"' if name and group else f'{base} "{name}"' if name else (
        f"{base}.{group}" if group else base)
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    kind = f"resource \"{base}\"" + (f' with subresource "{sub}"' if sub else "")
    raise errors.forbidden(
        f'{what} is forbidden: User "{identity.name}" cannot {verb} {kind} in API group "{group}" {scope}',
        group, base, name,
    )


def rules_review(identity: Identity) -> Iterable[Rule]:
    return identity.rules
