"""The agent's heartbeat: a ``coordination.k8s.io/v1`` Lease named after its node, renewed on a timer.

Liveness is kept apart from state (as Kubernetes does for Nodes in ``kube-node-lease``): the
EdgeAgent status is written only when something in it changes, while this Lease is renewed every
``renew_interval_s`` with one PUT of the last Lease seen (optimistic concurrency: a 409 re-reads
it, a 404 creates it). The operator counts a node as fresh while ``spec.renewTime`` is younger
than its stale timeout. A renewal that fails is logged once per failure streak and reported to
``on_change`` so that the EdgeAgent status carries a ``LeaseRenewed`` condition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from edgemodel.kube import ApiError, ApiUnavailable, KubeClient

log = logging.getLogger(__name__)

HEARTBEAT_LABEL = "edgemodel.io/heartbeat"
"""Label of the agents' Leases: the operator lists and watches by it."""


def lease_path(namespace: str, name: str | None = None) -> str:
    """Path of the Leases of a namespace, or of one Lease."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"
    return f"{path}/{quote(name, safe='')}" if name else path


def micro_time(when: dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseRenewer:
    """Keeps ``Lease <namespace>/<node>`` renewed; ``renewed`` tells whether the last attempt worked."""

    def __init__(self, client: KubeClient, namespace: str, node_name: str, duration_s: int = 40,
                 renew_interval_s: float = 10.0, on_change: Callable[[], None] = lambda: None) -> None:
        self.client = client
        self.namespace = namespace
        self.node_name = node_name
        self.duration_s = duration_s
        self.renew_interval_s = renew_interval_s
        self.on_change = on_change
        self.renewed: bool | None = None
        """None before the first attempt; then whether the last renewal succeeded."""
        self.error = ""
        """Why the last renewal failed ('' when it succeeded)."""
        self.renewals = 0
        self._lease: dict[str, Any] | None = None

    def _body(self, current: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        spec = dict((current or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.node_name:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
        spec.update(holderIdentity=self.node_name, leaseDurationSeconds=self.duration_s, renewTime=now)
        metadata = dict((current or {}).get("metadata") or {"name": self.node_name, "namespace": self.namespace})
        metadata["labels"] = {**(metadata.get("labels") or {}), HEARTBEAT_LABEL: "true"}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def renew(self) -> dict[str, Any]:
        """One renewal: PUT the last Lease seen (re-read on a conflict, created when missing)."""
        for _ in range(3):
            if self._lease is None:
                try:
                    self._lease = await self.client.get(lease_path(self.namespace, self.node_name))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    try:
                        self._lease = await self.client.create(lease_path(self.namespace), self._body(None))
                        log.info("Created Lease %s/%s (the heartbeat of EdgeAgent %s)", self.namespace, self.node_name,
                                 self.node_name)
                        return self._lease
                    except ApiError as create_exc:
                        if create_exc.status != 409:
                            raise
                        continue
            try:
                self._lease = await self.client.put(lease_path(self.namespace, self.node_name), self._body(self._lease))
                return self._lease
            except ApiError as exc:
                self._lease = None
                if exc.status not in (404, 409):
                    raise
        raise ApiError(409, "the Lease kept changing under the agent", "409 Conflict: the Lease kept changing", "Conflict")

    async def run(self) -> None:
        """Renew every ``renew_interval_s`` until cancelled; failures are retried on the same cadence."""
        while True:  # runs until cancelled
            started = time.monotonic()
            await self.renew_once()
            await asyncio.sleep(max(0.0, self.renew_interval_s - (time.monotonic() - started)))

    async def renew_once(self) -> bool:
        """Renew now; returns whether it worked (state changes are logged and reported)."""
        try:
            await self.renew()
        except (ApiError, ApiUnavailable) as exc:
            self._set(False, str(exc))
            return False
        except Exception as exc:  # a bug must not stop the heartbeat
            log.exception("Renewing Lease %s/%s failed unexpectedly", self.namespace, self.node_name)
            self._set(False, f"{type(exc).__name__}: {exc}")
            return False
        self.renewals += 1
        self._set(True, "")
        return True

    def _set(self, renewed: bool, error: str) -> None:
        changed = renewed != self.renewed
        if changed and not renewed:
            log.warning("Could not renew Lease %s/%s: %s; the operator marks node %s stale after its timeout",
                        self.namespace, self.node_name, error, self.node_name)
        elif changed and self.renewed is False:
            log.info("Renewed Lease %s/%s again", self.namespace, self.node_name)
        self.renewed, self.error = renewed, error
        if changed:
            self.on_change()
