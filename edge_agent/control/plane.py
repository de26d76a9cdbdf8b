"""The agent's side of the control plane: its own EdgeAgent object, heartbeat, watch, offline autonomy.

On start the agent restores the last assignment from its cache and serves it before it has
talked to the API server. Then, in a loop with backoff:

1. GET (or create) ``EdgeAgent/<node>`` with the ``--label`` flags as labels (for people; the operator
   selects on the Node's labels, which the agent neither reads nor writes),
2. write the whole status (capabilities, endpoint, per-model state),
3. apply ``spec.models`` when it changed, and watch that one object
   (``fieldSelector=metadata.name=<node>``) until the watch ends or fails.

Liveness is apart from state: the heartbeat is the node's Lease (``lease.LeaseRenewer``,
renewed every ``heartbeat_interval_s``), and the status is written only when something in it
changed (model states, capabilities, endpoint, conditions; request counts and p50/p95 are
looked at every ``stats_interval_s``), coalesced to at most one write per
``status_min_interval_s``. When the API server is unreachable nothing stops serving; when it
returns, the agent re-registers, reports and reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from edge_agent.control.decide import LeaseFacts, SpecChange, agent_conditions, apply_retry_delay, spec_change
from edge_agent.control.lease import LeaseRenewer
from edge_agent.control.reconciler import ApplyFailed, Reconciler
from edgemodel.api import (
    API_VERSION,
    GROUP,
    VERSION,
    Capabilities,
    Condition,
    EdgeAgentSpec,
    GrpcEndpoint,
    ModelAssignment,
    now_rfc3339,
    set_condition,
)
from edgemodel.errors import describe_validation_error
from edgemodel.kube import ApiError, ApiUnavailable, KubeClient, resource_path
from edgemodel.retry import Backoff

log = logging.getLogger(__name__)

MAX_APPLY_RETRY_S = 300.0
"""Longest wait between two attempts to apply a spec that could not be applied (e.g. disk full)."""
MAX_WATCH_RETRY_S = 30.0
"""Longest wait between two attempts to reach the API server."""

PLURAL = "edgeagents"


class ControlPlane:
    """Registers, heartbeats, watches and reconciles; survives API outages."""

    def __init__(
        self,
        node_name: str,
        client: KubeClient,
        reconciler: Reconciler,
        capabilities: Capabilities,
        endpoint: str,
        labels: dict[str, str],
        split_endpoint: str = "",
        grpc: GrpcEndpoint | None = None,
        heartbeat_interval_s: float = 10.0,
        status_min_interval_s: float = 1.0,
        stats_interval_s: float = 10.0,
        lease_namespace: str | None = "default",
        lease_duration_s: int = 40,
        resync_interval_s: float = 60.0,
        watch_timeout_s: float = 300.0,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.node_name = node_name
        self.client = client
        self.reconciler = reconciler
        self.capabilities = capabilities
        self.endpoint = endpoint
        self.split_endpoint = split_endpoint
        """URL of this agent's tail server ('' without --split-port), reported as status.splitEndpoint."""
        self.grpc = grpc
        """This agent's gRPC endpoint (None without --grpc-port), reported as status.grpc."""
        self.labels = labels
        self.heartbeat_interval_s = heartbeat_interval_s
        self.status_min_interval_s = status_min_interval_s
        self.stats_interval_s = stats_interval_s
        self.resync_interval_s = resync_interval_s
        self.watch_timeout_s = watch_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.apply_backoff = Backoff(first=retry_backoff_s, cap=max(MAX_APPLY_RETRY_S, retry_backoff_s))
        """Between attempts to apply a spec that could not be applied."""
        self.watch_backoff = Backoff(first=retry_backoff_s, cap=max(MAX_WATCH_RETRY_S, retry_backoff_s))
        """Between attempts to reach the API server (register and watch)."""
        self.online: bool | None = None
        self.registered = asyncio.Event()
        """Set after the first successful registration (tests wait on it)."""
        self.observed_generation: int | None = None
        self._spec_fingerprint: bytes | None = None
        self._created_fingerprint: bytes | None = None
        self._conditions: list[Condition] = []
        self._apply_failures = 0
        self._apply_retry: tuple[float, dict[str, Any]] | None = None
        """When and what to apply again after ApplyFailed (a newer spec replaces it)."""
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.status_writes = 0
        self._written: bytes | None = None
        """Fingerprint of the last status written (without heartbeatTime): unchanged status is not written."""
        self.lease = None if lease_namespace is None else LeaseRenewer(
            client, lease_namespace, node_name, lease_duration_s, heartbeat_interval_s, on_change=self._dirty.set)
        """The heartbeat; None: no Lease (liveness from status.heartbeatTime only, for old operators)."""
        reconciler.on_change = self._dirty.set

    @property
    def object_path(self) -> str:
        return resource_path(GROUP, VERSION, PLURAL, self.node_name)

    # -- lifecycle ---------------------------------------------------------------------------
    def restore(self) -> int:
        """Serve the assignment saved before the last shutdown (before any API call); how many models."""
        saved = self.reconciler.cache.load_assignment()
        if not saved:
            return 0
        try:
            models = [ModelAssignment.model_validate(m) for m in saved.get("models") or []]
        except ValidationError as exc:
            log.warning("Ignored the saved assignment: %s", describe_validation_error(exc))
            return 0
        log.info("Restoring %d model(s) from the saved assignment of %s", len(models), saved.get("savedAt", "?"))
        self.reconciler.apply(models, persist=False)
        self.observed_generation = saved.get("generation")
        return len(models)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_loop(), name="edgeagent-watch"),
            loop.create_task(self._status_loop(), name="edgeagent-status"),
            loop.create_task(self._resync_loop(), name="edgeagent-resync"),
            loop.create_task(self._rtt_loop(), name="edgeagent-split-rtt"),
        ]
        if self.lease is not None:
            self._tasks.append(loop.create_task(self.lease.run(), name="edgeagent-lease"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.reconciler.close()
        await self.client.close()

    def _set_online(self, online: bool, detail: str = "") -> None:
        if online and self.online is not True:
            log.info("Connected to the Kubernetes API at %s as EdgeAgent %s", self.client.credentials.server, self.node_name)
        elif not online and self.online is not False:
            log.warning("Lost the Kubernetes API (%s); serving the cached assignment until it returns", detail)
        self.online = online

    # -- registration and watch --------------------------------------------------------------
    async def register(self) -> dict[str, Any]:
        """Create or refresh the EdgeAgent; returns the object as the API server has it.

        Its labels are the ``--label`` flags only, for people (``kubectl get ea -l ...``): the operator
        selects on the Node's labels, which an agent can neither set nor read.
        """
        labels = dict(self.labels)
        try:
            obj = await self.client.get(self.object_path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": API_VERSION,
                "kind": "EdgeAgent",
                "metadata": {"name": self.node_name, "labels": labels},
                "spec": {"nodeName": self.node_name},
            }
            try:
                obj = await self.client.create(resource_path(GROUP, VERSION, PLURAL), body)
                log.info("Created EdgeAgent %s with %d labels", self.node_name, len(labels))
                self._created_fingerprint = _fingerprint(obj.get("spec") or {})
            except ApiError as create_exc:
                if create_exc.status != 409:
                    raise
                obj = await self.client.get(self.object_path)
        else:
            current = (obj.get("metadata") or {}).get("labels") or {}
            missing = {k: v for k, v in labels.items() if current.get(k) != v}
            if missing:
                obj = await self.client.merge_patch(self.object_path, {"metadata": {"labels": missing}})
                log.info("Refreshed %d label(s) of EdgeAgent %s", len(missing), self.node_name)
        await self.write_status(only_if_changed=True, stored=obj.get("status") or {})
        self.registered.set()
        return obj

    def handle(self, obj: dict[str, Any]) -> None:
        """Apply the object's spec.models when the spec changed."""
        raw_spec = obj.get("spec") or {}
        fingerprint = _fingerprint(raw_spec)
        change = spec_change(fingerprint, self._spec_fingerprint, self._created_fingerprint, bool(self.reconciler.tracked))
        if change is SpecChange.UNCHANGED:
            return
        generation = (obj.get("metadata") or {}).get("generation")
        if change is SpecChange.OWN_EMPTY_SPEC:
            # We just (re)created the object: its empty spec was written by us, not the operator.
            log.info("EdgeAgent %s is new; serving the saved assignment until the operator writes spec.models", self.node_name)
            self._spec_fingerprint = fingerprint
            return
        self._created_fingerprint = None  # from now on every spec is the operator's
        try:
            spec = EdgeAgentSpec.model_validate(raw_spec)
        except ValidationError as exc:
            message = describe_validation_error(exc, "spec")
            log.error("Ignored an invalid EdgeAgent spec (generation %s): %s", generation, message)
            self._conditions = set_condition(self._conditions, "SpecValid", False, "InvalidSpec", message[:1000], generation)
            self._spec_fingerprint = fingerprint
            self._dirty.set()
            return
        self._conditions = set_condition(self._conditions, "SpecValid", True, "Valid", "", generation)
        log.info("Applying spec.models of EdgeAgent %s (generation %s): %s", self.node_name, generation,
                 ", ".join(f"{m.name}@{m.revision}" for m in spec.models) or "no models")  # fmt: skip
        try:
            self.reconciler.apply(spec.models, generation=generation)
        except ApplyFailed as exc:  # observed only once applied: the resync loop retries with backoff
            self._apply_failures += 1
            delay = apply_retry_delay(self._apply_failures, self.apply_backoff)
            self._apply_retry = (time.monotonic() + delay, obj)
            log.error("Could not apply spec.models of EdgeAgent %s (generation %s): %s; retrying in %.0f s",
                      self.node_name, generation, exc.message, delay)  # fmt: skip
            self._conditions = set_condition(self._conditions, "Applied", False, exc.reason,
                                             f"{exc.message}; retrying in {delay:.0f} s"[:1000], generation)  # fmt: skip
            self._dirty.set()
            return
        self._apply_failures, self._apply_retry = 0, None
        self._conditions = set_condition(self._conditions, "Applied", True, "Applied", "", generation)
        self._spec_fingerprint = fingerprint
        self.observed_generation = generation

    async def _watch_once(self) -> None:
        obj = await self.register()
        self._set_online(True)
        self.handle(obj)
        version = (obj.get("metadata") or {}).get("resourceVersion", "")
        params = {"fieldSelector": f"metadata.name={self.node_name}", "allowWatchBookmarks": "true"}
        if version:
            params["resourceVersion"] = str(version)
        async for kind, event in self.client.watch(resource_path(GROUP, VERSION, PLURAL), params, self.watch_timeout_s):
            if kind in ("ADDED", "MODIFIED"):
                self.handle(event)
            elif kind == "DELETED":
                log.warning("EdgeAgent %s was deleted; re-creating it", self.node_name)
                self._spec_fingerprint = None
                return
            elif kind == "ERROR":
                log.info("Watch of EdgeAgent %s ended with %s; re-reading it", self.node_name, event.get("message", event))
                return

    async def _watch_loop(self) -> None:
        failures = 0
        while True:  # runs until cancelled; each pass is bounded by the watch timeout or a failure
            started = time.monotonic()
            try:
                await self._watch_once()
                failures = 0
                if time.monotonic() - started < 1.0:  # a watch that ends at once must not spin
                    await asyncio.sleep(self.retry_backoff_s)
                continue
            except ApiUnavailable as exc:
                self._set_online(False, str(exc))
            except ApiError as exc:
                log.warning("The Kubernetes API refused a request for EdgeAgent %s: %s", self.node_name, exc)
            except Exception:  # a malformed event or a bug: log it, keep the loop alive
                log.exception("Watching EdgeAgent %s failed unexpectedly; retrying", self.node_name)
            failures += 1
            await asyncio.sleep(self.watch_backoff.delay(failures))

    # -- status ------------------------------------------------------------------------------
    def status_body(self) -> dict[str, Any]:
        models = self.reconciler.states()
        lease = None
        if self.lease is not None and self.lease.renewed is not None:
            lease = LeaseFacts(self.lease.renewed, f"Lease {self.lease.namespace}/{self.node_name}", str(self.lease.error))
        self._conditions = agent_conditions(self._conditions, models, lease, self.heartbeat_interval_s)
        body: dict[str, Any] = {
            "capabilities": self.capabilities.to_k8s(),
            "heartbeatTime": now_rfc3339(),
            "endpoint": self.endpoint,
            "splitEndpoint": self.split_endpoint,
            "grpc": self.grpc.to_k8s() if self.grpc is not None else None,
            "models": [m.to_k8s() for m in models],
            "conditions": [c.to_k8s() for c in self._conditions],
        }
        if self.observed_generation is not None:
            body["observedGeneration"] = self.observed_generation
        if (hub := getattr(self.reconciler.server, "continual", None)) is not None:  # docs/continual.md
            body["continual"] = hub.status()
        return body

    async def write_status(self, only_if_changed: bool = False, stored: dict[str, Any] | None = None) -> bool:
        """Write the status (``heartbeatTime`` = now); with ``only_if_changed`` skip it when nothing else changed
        since the last write (or, given the ``stored`` status, when the API server already has it)."""
        body = self.status_body()
        fingerprint = _fingerprint({k: v for k, v in body.items() if k != "heartbeatTime"})
        if stored is not None:
            self._written = _fingerprint({k: v for k, v in stored.items() if k != "heartbeatTime"})
        if only_if_changed and fingerprint == self._written:
            return False
        self._written = None  # unknown until the write succeeds
        await self.client.merge_patch(resource_path(GROUP, VERSION, PLURAL, self.node_name, "status"), {"status": body})
        self._written = fingerprint
        self.status_writes += 1
        return True

    async def _status_loop(self) -> None:
        last = time.monotonic()
        while True:  # runs until cancelled; at most one write per pass and per min interval, none without a change
            wait = max(0.0, self.stats_interval_s - (time.monotonic() - last))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._dirty.wait()
            pause = self.status_min_interval_s - (time.monotonic() - last)
            if pause > 0:
                await asyncio.sleep(pause)
            self._dirty.clear()
            last = time.monotonic()
            if not self.registered.is_set():
                continue
            try:
                await self.write_status(only_if_changed=True)
                self._set_online(True)
            except ApiUnavailable as exc:
                self._set_online(False, str(exc))
            except ApiError as exc:
                log.warning("Writing the status of EdgeAgent %s failed: %s", self.node_name, exc)
            except Exception:
                log.exception("Writing the status of EdgeAgent %s failed unexpectedly", self.node_name)

    async def _resync_loop(self) -> None:
        while True:  # runs until cancelled
            await asyncio.sleep(min(self.resync_interval_s, 1.0))
            if self._apply_retry is not None and self._apply_retry[0] <= time.monotonic():
                self.handle(self._apply_retry[1])
            self.reconciler.retry_due()

    async def _rtt_loop(self) -> None:
        """Re-measure the heads' cloud RTT on the heartbeat cadence (the next status write reports it)."""
        while True:  # runs until cancelled
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.reconciler.measure_rtts()
            except Exception:  # never let a measurement stop the loop
                log.exception("Measuring the cloud RTT of the split heads failed unexpectedly")


def _fingerprint(spec: dict[str, Any]) -> bytes:
    return orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)


def advertised_address(host: str) -> str:
    """The address clients reach this agent at: POD_IP (downward API) when set, else the bind host ([v6])."""
    address = os.environ.get("POD_IP") or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return address


def default_endpoint(scheme: str, host: str, port: int) -> str:
    """Where clients reach this agent's HTTP port: POD_IP (downward API) when set, else the bind host."""
    return f"{scheme}://{advertised_address(host)}:{port}"


def grpc_endpoint(endpoint: str, host: str, port: int, tls: bool) -> GrpcEndpoint:
    """The gRPC endpoint reported in status: on the host of the REST endpoint (``--endpoint`` when given)."""
    hostname = urlsplit(endpoint).hostname if endpoint else None
    if hostname and ":" in hostname:
        hostname = f"[{hostname}]"
    return GrpcEndpoint(target=f"{hostname or advertised_address(host)}:{port}", port=port, tls=tls)
