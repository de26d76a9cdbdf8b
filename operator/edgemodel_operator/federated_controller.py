"""FederatedTraining, the acting part: one level-driven reconcile that validates, starts the children, follows the
server's /status, watches for clients that found bad input, publishes the trained model into the EdgeModel and
cleans up. Called in a loop by the object's kopf daemon (federated_handlers)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
from pydantic import ValidationError

from edgemodel.api import ConditionStatus, RevisionOrigin, now_rfc3339, set_condition
from edgemodel.api.federated import FederatedPhase, FederatedTraining, FederatedTrainingStatus, RoundRecord
from edgemodel_operator import federated as fl
from edgemodel_operator import revisions
from edgemodel_operator.federated_metrics import FederatedMetrics
from edgemodel_operator.federated_pki import make_server_tls
from edgemodel_operator.jobs import JobPhase, job_state
from edgemodel_operator.kube import ApiError, Paths
from edgemodel_operator.runtime import Runtime

log = logging.getLogger(__name__)

STATUS_TIMEOUT = aiohttp.ClientTimeout(total=3)
MAX_STATUS_BYTES = 2 * 1024 * 1024


def training_path(namespace: str, name: str) -> str:
    return f"/apis/edgemodel.io/v1alpha1/namespaces/{namespace}/federatedtrainings/{quote(name)}"


def _services(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services"


def _secrets(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets"


@dataclass
class Outcome:
    finished: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)


class FederatedController:
    """Reconciles FederatedTrainings with the operator's client, settings and metrics."""

    def __init__(self, runtime: Runtime, settings: fl.FederatedSettings, metrics: FederatedMetrics) -> None:
        self.runtime = runtime
        self.client = runtime.client
        self.settings = settings
        self.metrics = metrics

    async def reconcile(self, namespace: str, name: str) -> bool:
        """One pass; True when the training is finished (nothing more to do)."""
        body = await self.client.get(training_path(namespace, name), missing_ok=True)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return True
        outcome = Outcome()
        status = FederatedTrainingStatus.model_validate(body.get("status") or {})
        before = status.to_k8s()
        generation = body["metadata"].get("generation")
        try:
            obj = fl.parse(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"spec.{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
            )
            status = self._fail(status, "InvalidSpec", problems, generation, outcome)
            outcome.finished = True
        else:
            if fl.is_terminal(status.phase):
                await self.cleanup(namespace, name)
                outcome.finished = True
            elif status.phase == FederatedPhase.PENDING:
                status = await self._start(body, obj, status, outcome)
            else:
                status = await self._follow(body, obj, status, outcome)
        status.observed_generation = generation
        if status.to_k8s() != before:
            await self.client.patch(training_path(namespace, name) + "/status", {"status": status.to_k8s()})
        self._emit(body, outcome.events)
        return outcome.finished

    # starting ---------------------------------------------------------------------------------------
    async def _start(
        self,
        body: Mapping[str, Any],
        obj: FederatedTraining,
        status: FederatedTrainingStatus,
        outcome: Outcome,
    ) -> FederatedTrainingStatus:
        spec = obj.spec
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        generation = body["metadata"].get("generation")
        nodes = fl.select_nodes(await self.client.list(Paths.nodes()), spec.selector)
        edgemodel_exists = None
        if spec.edge_model:
            edgemodel_exists = await self.client.get(Paths.edgemodel(namespace, spec.edge_model), missing_ok=True) is not None
        problems = fl.spec_problems(spec, nodes, edgemodel_exists)
        if problems:
            outcome.finished = True
            return self._fail(status, "InvalidSpec", "; ".join(problems), generation, outcome)
        tls = make_server_tls(fl.server_name(name), fl.tls_hosts(self.settings, name, namespace))
        address = f"{fl.server_host(self.settings, name, namespace)}:{spec.port}"
        for secret in fl.build_secrets(body, tls.ca, tls.cert, tls.key):
            await self._create(_secrets(namespace), secret)
        await self._create(_services(namespace), fl.build_service(body, spec))
        await self._create(
            Paths.jobs(namespace), fl.build_server_job(body, spec, self.runtime.settings, self.settings)
        )
        for node in nodes:
            await self._create(
                Paths.jobs(namespace),
                fl.build_client_job(body, spec, node, address, self.runtime.settings, self.settings),
            )
        new = status.model_copy(deep=True)
        new.phase, new.nodes, new.started_at = FederatedPhase.TRAINING, nodes, now_rfc3339()
        new.clients = f"0/{len(nodes)}"
        new.conditions = set_condition(
            new.conditions,
            "Started",
            True,
            "JobsCreated",
            f"aggregation server at {address} and {len(nodes)} clients "
            f"({', '.join(nodes)}), {spec.strategy.name.value}, up to {spec.rounds} rounds",
            generation,
        )
        message = f"Started federated training on {len(nodes)} node(s): {', '.join(nodes)}"
        outcome.events.append(("Normal", "Started", message))
        self.metrics.trainings.labels(outcome="started").inc()
        self.metrics.start(namespace, name)
        log.info("%s for FederatedTraining %s/%s", message, namespace, name)
        return new

    async def _create(self, path: str, body: dict[str, Any]) -> None:
        try:
            await self.client.create(path, body)
        except ApiError as exc:
            if exc.status != 409:
                raise

    # following --------------------------------------------------------------------------------------
    async def _follow(
        self,
        body: Mapping[str, Any],
        obj: FederatedTraining,
        status: FederatedTrainingStatus,
        outcome: Outcome,
    ) -> FederatedTrainingStatus:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        generation = body["metadata"].get("generation")
        progress = await self._read_progress(namespace, name, obj.spec.port + 1)
        new = status
        if progress is not None:
            new = fl.apply_progress(status, progress, len(status.nodes))
            self._record_rounds(body, status, new, outcome)
        bad = await self._bad_client(namespace, name)
        if bad is not None:
            outcome.finished = True
            await self.cleanup(namespace, name)
            return self._fail(new, bad[0], bad[1], generation, outcome)
        server = await self.client.get(Paths.job(namespace, fl.server_name(name)), missing_ok=True)
        if server is None:
            outcome.finished = True
            await self.cleanup(namespace, name)
            return self._fail(
                new,
                "ServerLost",
                "the aggregation server's Job was deleted; create the FederatedTraining again to restart",
                generation,
                outcome,
            )
        state = job_state(server)
        if state.phase == JobPhase.RUNNING:
            return new
        pods = await self.client.list(Paths.pods(namespace), f"job-name={fl.server_name(name)}")
        code, message = fl.terminated_message(pods, fl.SERVER_CONTAINER)
        outcome.finished = True
        if state.phase == JobPhase.SUCCEEDED and message.get("ok"):
            new = await self._succeed(body, obj, new, message, outcome)
        else:
            reason = str(message.get("reason") or state.reason or "ServerFailed")
            text = str(
                message.get("message") or state.message or f"the aggregation server exited with {code}"
            )
            new = self._fail(new, reason, text, generation, outcome)
        await self.cleanup(namespace, name)
        return new

    async def _read_progress(self, namespace: str, name: str, port: int) -> dict[str, Any] | None:
        url = f"http://{fl.server_host(self.settings, name, namespace)}:{port}/status"
        try:
            async with self.runtime.session().get(url, timeout=STATUS_TIMEOUT) as resp:
                if resp.status != 200:
                    return None
                raw = await resp.content.read(MAX_STATUS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("Server status %s not readable yet (%s)", url, exc)
            return None
        if len(raw) > MAX_STATUS_BYTES:
            log.warning("Ignored an oversized /status from %s", url)
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _record_rounds(
        self,
        body: Mapping[str, Any],
        old: FederatedTrainingStatus,
        new: FederatedTrainingStatus,
        outcome: Outcome,
    ) -> None:
        known = {r.round for r in old.rounds}
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        for record in new.rounds:
            if record.round in known:
                continue
            self.metrics.observe_round(namespace, name, record)
            if record.round % self.settings.event_every_rounds == 0:
                outcome.events.append(("Normal", "Round", _round_text(record)))

    async def _bad_client(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(reason, message) of a client that exited with bad input (exit 2): e.g. a node without data."""
        pods = await self.client.list(
            Paths.pods(namespace), f"{fl.LABEL_TRAINING}={name},app.kubernetes.io/component=federated-client"
        )
        for pod in pods:
            code, message = fl.terminated_message([pod], fl.CLIENT_CONTAINER)
            if code == fl.EXIT_BAD_INPUT:
                node = (pod.get("spec") or {}).get("nodeName") or "?"
                return str(
                    message.get("reason") or "ClientFailed"
                ), f"node {node}: {message.get('message') or 'bad input'}"
        return None

    # finishing --------------------------------------------------------------------------------------
    async def _succeed(
        self,
        body: Mapping[str, Any],
        obj: FederatedTraining,
        status: FederatedTrainingStatus,
        result: Mapping[str, Any],
        outcome: Outcome,
    ) -> FederatedTrainingStatus:
        from edgemodel.api.federated import TrainedModel

        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        generation = body["metadata"].get("generation")
        new = status.model_copy(deep=True)
        model = TrainedModel(
            uri=str(result["uri"]),
            sha256=str(result["sha256"]),
            round=int(result["round"]),
            accuracy=float(result.get("accuracy") or 0.0),
        )
        new.model, new.phase, new.finished_at = model, FederatedPhase.SUCCEEDED, now_rfc3339()
        text = (
            f"trained for {model.round} round(s): validation accuracy {model.accuracy:.4f}; model {model.uri}"
        )
        new.conditions = set_condition(new.conditions, "Completed", True, "Trained", text, generation)
        outcome.events.append(("Normal", "Completed", f"Finished federated training: {text}"))
        self.metrics.trainings.labels(outcome="succeeded").inc()
        log.info("Finished FederatedTraining %s/%s: %s", namespace, name, text)
        if obj.spec.edge_model:
            reason = (
                "reached the target validation accuracy"
                if result.get("stoppedAtTarget")
                else f"completed {model.round} round(s)"
            )
            published = await self._publish(
                namespace, name, body["metadata"].get("uid", ""), obj.spec.edge_model, model, reason
            )
            if published is None:
                new.conditions = set_condition(
                    new.conditions,
                    "ModelPublished",
                    False,
                    "EdgeModelMissing",
                    f"spec.edgeModel: EdgeModel {obj.spec.edge_model!r} no longer exists; the "
                    f"model stays at {model.uri}",
                    generation,
                )
                outcome.events.append(
                    ("Warning", "EdgeModelMissing", f"EdgeModel {obj.spec.edge_model} is gone")
                )
            else:
                new.conditions = set_condition(
                    new.conditions,
                    "ModelPublished",
                    True,
                    "SourceUpdated",
                    f"EdgeModel {obj.spec.edge_model} (generation {published}) now converts "
                    f"and rolls out the trained model",
                    generation,
                )
                outcome.events.append(
                    (
                        "Normal",
                        "ModelPublished",
                        f"EdgeModel {obj.spec.edge_model} source set to the trained model",
                    )
                )
        return new

    async def _publish(
        self, namespace: str, name: str, uid: str, edgemodel: str, model: Any, reason: str
    ) -> int | None:
        """Point the EdgeModel's spec.source at the trained model, with its provenance in the annotations
        ``edgemodel.io/trained-by`` and ``edgemodel.io/revision-origin`` (the revision the EdgeModel opens for
        this source records the latter as its ``origin``); returns the EdgeModel's new generation."""
        provenance = {
            "federatedTraining": f"{namespace}/{name}",
            "uid": uid,
            "round": model.round,
            "accuracy": round(model.accuracy, 6),
            "sha256": model.sha256,
        }
        origin = RevisionOrigin(
            kind="FederatedTraining",
            name=f"{namespace}/{name}",
            reason=reason,
            metrics={"round": float(model.round), "validationAccuracy": round(model.accuracy, 6)},
        )
        annotations = {
            fl.ANNOTATION_TRAINED_BY: json.dumps(provenance, sort_keys=True),
            **revisions.origin_annotation(origin, model.uri),
        }
        patch = {
            "metadata": {"annotations": annotations},
            "spec": {"source": {"uri": model.uri, "format": "TorchScript", "sha256": model.sha256}},
        }
        try:
            updated = await self.client.patch(Paths.edgemodel(namespace, edgemodel), patch)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return int(updated["metadata"].get("generation") or 0)

    def _fail(
        self,
        status: FederatedTrainingStatus,
        reason: str,
        message: str,
        generation: int | None,
        outcome: Outcome,
    ) -> FederatedTrainingStatus:
        new = status.model_copy(deep=True)
        new.phase, new.finished_at = FederatedPhase.FAILED, now_rfc3339()
        new.conditions = set_condition(
            new.conditions, "Failed", ConditionStatus.TRUE, _camel(reason), message, generation
        )
        outcome.events.append(("Warning", _camel(reason), message))
        self.metrics.trainings.labels(outcome="failed").inc()
        log.warning("FederatedTraining failed (%s): %s", reason, message)
        return new

    async def cleanup(self, namespace: str, name: str) -> None:
        """Delete every child (Jobs with their Pods, the Service, the Secrets); idempotent."""
        selector = f"{fl.LABEL_TRAINING}={name}"
        for job in await self.client.list(Paths.jobs(namespace), selector):
            await self.client.delete(Paths.job(namespace, job["metadata"]["name"]))
        await self.client.delete(f"{_services(namespace)}/{quote(fl.server_name(name))}")
        for secret in (fl.tls_secret_name(name), fl.ca_secret_name(name)):
            await self.client.delete(f"{_secrets(namespace)}/{quote(secret)}")

    def _emit(self, body: Mapping[str, Any], events: list[tuple[str, str, str]]) -> None:
        for type_, reason, message in events:
            try:
                kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
            except LookupError:
                log.info("Event %s %s: %s", type_, reason, message)


def _camel(reason: str) -> str:
    cleaned = "".join(ch for ch in reason if ch.isalnum() or ch == "_")
    return cleaned if cleaned and cleaned[0].isalpha() else "Failed"


def _round_text(record: RoundRecord) -> str:
    acc = f"{record.accuracy:.4f}" if record.accuracy is not None else "-"
    return (
        f"Round {record.round}: accuracy {acc}, {len(record.participating)} client(s) aggregated, "
        f"{len(record.dropped)} dropped, {record.bytes_exchanged:,} bytes, {record.seconds:.1f} s"
    )
