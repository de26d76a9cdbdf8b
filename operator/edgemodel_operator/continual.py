"""Continual learning in the operator: watch the triggers, run the training Job, open a new revision.

A kopf timer (``register``) runs ``tick`` for every EdgeModel with ``spec.continual.enabled``:

1. Read the ``status.continual`` entries the selected agents report for the model (drift, labelled
   feedback accuracy, labelled captured samples) and evaluate the triggers (``edgemodel.continual.triggers``).
2. On a trigger: create the training Job (converter image, ``python -m edgemodel.continual.train``), which
   fine-tunes with replay on the captured samples the agents uploaded to the artifact store and gates the
   result (gain on new data >= minAccuracyGain, drop on the original validation <= maxAccuracyDrop).
3. When the Job ends: read its report from the store. Passed: ``spec.source`` is set to the retrained
   model (annotated with the round and its trigger), so the usual conversion, gate and canary make the new
   revision. Rejected or failed: the current revision keeps serving, and the round says why.

Every step is in ``status.continual`` (rounds with the trigger and the gate's numbers, and the
ContinualLearning condition), an Event and a log line, and ``edgemodel_continual_*`` metrics. Only the
``status.continual`` subtree is written (merge patch), so the reconciler's own status writes are untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from edgemodel.api import ConditionStatus, EdgeModel, RevisionOrigin, set_condition
from edgemodel.api.continual import ContinualRound, ContinualStatus
from edgemodel.continual.triggers import AgentReport, Decision, evaluate
from edgemodel_operator.constants import EDGEMODELS, LABEL_MODEL, STORE_TOKEN_KEY
from edgemodel_operator.jobs import CONTAINER_SECURITY, JobPhase, converter_pod_security, job_state
from edgemodel_operator.kube import Paths
from edgemodel_operator.revisions import origin_annotation
from edgemodel_operator.runtime import Runtime
from edgemodel_operator.scheduling import AgentView
from edgemodel_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

MAX_ROUNDS = 20
LABEL_COMPONENT_CONTINUAL = "edgemodel.io/continual"
ANNOTATION_TRIGGER = "edgemodel.io/continual-trigger"
ANNOTATION_ROUND = "edgemodel.io/continual-round"
CONDITION = "ContinualLearning"


class ContinualMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter(
            "edgemodel_continual_rounds_total",
            "Continual-learning rounds by outcome (Started, Passed, Rejected, Failed).",
            ["namespace", "model", "outcome"],
            registry=registry,
        )
        self.drifting = Gauge(
            "edgemodel_continual_drifting_agents",
            "Selected agents reporting a drift alarm now.",
            ["namespace", "model"],
            registry=registry,
        )
        self.samples = Gauge(
            "edgemodel_continual_labelled_samples",
            "Labelled captured samples over the agents.",
            ["namespace", "model"],
            registry=registry,
        )
        self.gain = Gauge(
            "edgemodel_continual_gate_accuracy",
            "Accuracies of the last gate, by dataset (new, original) and model (before, after).",
            ["namespace", "model", "dataset", "model_state"],
            registry=registry,
        )


_metrics: dict[int, ContinualMetrics] = {}


def metrics(runtime: Runtime) -> ContinualMetrics:
    registry = runtime.metrics.registry
    if id(registry) not in _metrics:
        _metrics[id(registry)] = ContinualMetrics(registry)
    return _metrics[id(registry)]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def reports_for(agents: Iterable[AgentView], namespace: str, name: str) -> tuple[AgentReport, ...]:
    """The ``status.continual`` entries of this model in the fleet (entries that did not parse were dropped there)."""
    return tuple(
        AgentReport(view.name, entry)
        for view in agents
        for entry in view.continual
        if entry.name == name and entry.namespace in ("", namespace)
    )


def round_prefix(namespace: str, name: str, number: int) -> str:
    return f"continual/{namespace}/{name}/round-{number}"


def job_name(name: str, number: int) -> str:
    return f"{name[:40]}-continual-{number}"


def build_training_job(
    owner: Mapping[str, Any], em: EdgeModel, number: int, settings: OperatorSettings
) -> dict[str, Any]:
    """The batch/v1 Job running one round (converter image)."""
    meta = owner["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    spec = em.spec
    c = spec.continual
    replay = c.replay_data_uri or spec.optimization.training.data_uri
    validation = spec.validation.data_uri or ""
    store = settings.store_url.rstrip("/")
    env: list[dict[str, Any]] = [{"name": "TMPDIR", "value": "/scratch"}]
    if settings.store_token_secret:
        env.append(
            {
                "name": "EDGEMODEL_STORE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": settings.store_token_secret, "key": STORE_TOKEN_KEY}},
            }
        )
    labels = {LABEL_MODEL: name, LABEL_COMPONENT_CONTINUAL: str(number)}
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name, number), "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": c.max_training_seconds + 120,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": converter_pod_security(settings, fs_group=False),
                    "containers": [
                        {
                            "name": "train",
                            "image": settings.converter_image,
                            "imagePullPolicy": settings.converter_image_pull_policy,
                            "command": ["python", "-m", "edgemodel.continual.train"],
                            "args": [
                                "--source-uri",
                                spec.source.uri,
                                "--captures-url",
                                f"{store}/captures/{namespace}/{name}/",
                                "--replay-uri",
                                replay or "",
                                "--validation-uri",
                                validation,
                                "--input-name",
                                spec.inputs[0].name,
                                "--labels-array",
                                spec.validation.labels_array,
                                "--store-url",
                                store,
                                "--out-prefix",
                                round_prefix(namespace, name, number),
                                "--epochs",
                                str(c.epochs),
                                "--learning-rate",
                                str(c.learning_rate),
                                "--replay-ratio",
                                str(c.replay_ratio),
                                "--holdout-fraction",
                                str(c.holdout_fraction),
                                "--min-gain",
                                str(c.min_accuracy_gain),
                                "--max-drop",
                                str(spec.validation.max_accuracy_drop),
                                "--max-seconds",
                                str(c.max_training_seconds),
                            ],
                            "env": env,
                            "resources": {
                                "requests": {
                                    "cpu": settings.converter_cpu_request,
                                    "memory": settings.converter_memory_request,
                                },
                                "limits": {
                                    "cpu": settings.converter_cpu_limit,
                                    "memory": settings.converter_memory_limit,
                                },
                            },
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                            "securityContext": dict(CONTAINER_SECURITY),
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }
    kopf.adopt(job, owner=kopf.Body(dict(owner)))  # type: ignore[arg-type]
    return job


def missing_inputs(em: EdgeModel) -> str:
    """Why a round cannot run with this spec ('' when it can)."""
    spec = em.spec
    replay = spec.continual.replay_data_uri or spec.optimization.training.data_uri
    if not replay:
        return "spec.continual.replayDataUri (or spec.optimization.training.dataUri) is needed: the original data replayed"
    if not spec.validation.data_uri:
        return (
            "spec.validation.dataUri is needed: the gate measures forgetting on the original validation set"
        )
    if spec.source.format.value != "TorchScript":
        return f"spec.source.format {spec.source.format.value}: fine-tuning needs a TorchScript source"
    return ""


def emit(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """An Event on the EdgeModel (a log line when not inside a kopf handler, e.g. in tests)."""
    try:
        kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
    except LookupError:
        log.info("Event %s %s: %s", type_, reason, message)


@dataclass(frozen=True)
class Snapshot:
    """What one tick decides on: the EdgeModel, the agents' reports (fleet cache) and the running round."""

    body: Mapping[str, Any]
    namespace: str
    name: str
    em: EdgeModel
    status: ContinualStatus
    reports: tuple[AgentReport, ...]
    now: dt.datetime
    job: Mapping[str, Any] | None = None
    """The active round's Job (None: no round running, or the Job is gone)."""
    report: Mapping[str, Any] | None = None
    """The active round's report.json, read once its Job is no longer running."""


@dataclass
class Plan:
    """What a tick does (``act``): create the Job, point spec.source at the new model, write status, tell."""

    status: ContinualStatus | None = None
    """The new status.continual (None: unchanged, nothing written)."""
    job: dict[str, Any] | None = None
    source_patch: dict[str, Any] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) Events on the EdgeModel."""
    log: str = ""
    outcome: str = ""
    """edgemodel_continual_rounds_total label to count (Started, Passed, Rejected, Failed)."""
    gate: dict[tuple[str, str], float] = field(default_factory=dict)
    """(dataset, model_state) -> accuracy of the gate that just ended."""
    drifting: int | None = None
    samples: int | None = None


async def _report(runtime: Runtime, namespace: str, name: str, number: int) -> dict[str, Any] | None:
    url = f"{runtime.settings.store_url.rstrip('/')}/{round_prefix(namespace, name, number)}/report.json"
    try:
        async with runtime.session().get(url) as response:
            if response.status != 200:
                return None
            text = await response.content.read(1 << 20)
            data = json.loads(text)
            return data if isinstance(data, dict) else None
    except (OSError, ValueError, TimeoutError) as exc:
        log.warning("Cannot read the continual report %s: %s", url, exc)
        return None


async def observe(runtime: Runtime, body: Mapping[str, Any]) -> Snapshot | None:
    """The snapshot of one EdgeModel; None when it is invalid, has continual learning off, or the fleet is unsynced."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", "default"), meta.get("name", "")
    try:
        em = EdgeModel.model_validate(dict(body))
    except ValidationError:
        return None  # the reconciler reports an invalid spec
    if not em.spec.continual.enabled:
        return None
    if not runtime.fleet.synced.is_set():
        log.info("EdgeModel %s/%s: continual tick skipped: the EdgeAgent cache is not synced yet", namespace, name)
        return None
    status = (em.status.continual if em.status and em.status.continual else None) or ContinualStatus()
    job = report = None
    if status.active_job:
        job = await runtime.client.get(Paths.job(namespace, status.active_job), missing_ok=True)
        if (job is None or job_state(job).phase != JobPhase.RUNNING) and status.rounds:
            report = await _report(runtime, namespace, name, status.rounds[-1].round)
    return Snapshot(
        body=body,
        namespace=namespace,
        name=name,
        em=em,
        status=status,
        reports=reports_for(runtime.fleet.snapshot(), namespace, name),
        now=now_utc(),
        job=job,
        report=report,
    )


def _condition(status: ContinualStatus, value: bool, reason: str, message: str) -> None:
    status.conditions = set_condition(
        status.conditions,
        CONDITION,
        ConditionStatus.TRUE if value else ConditionStatus.FALSE,
        reason,
        message[:1000],
    )


def decide(snap: Snapshot, settings: OperatorSettings) -> Plan:
    """Pure: follow the running round, or start one when a trigger fires, or say why it waits."""
    status = snap.status.model_copy(deep=True)
    if status.active_job:
        if snap.job is not None and job_state(snap.job).phase == JobPhase.RUNNING:
            return Plan()
        return finish(snap, status)
    plan = Plan(
        drifting=sum(1 for r in snap.reports if r.state.drift_alarm),
        samples=sum(r.state.labelled_captured for r in snap.reports),
    )
    em = snap.em
    decision: Decision = evaluate(
        em.spec.continual, list(snap.reports), status, snap.now, em.status.revision if em.status else None
    )
    where = f"EdgeModel {snap.namespace}/{snap.name}"
    if not decision.fire:
        waiting = decision.reason
        old = next((c for c in status.conditions if c.type == CONDITION), None)
        if waiting and (old is None or old.message != waiting[:1000]):
            _condition(status, False, "Waiting", waiting)
            plan.status = status
            plan.log = f"{where}: continual learning waits: {waiting}"
        return plan
    problem = missing_inputs(em)
    if problem:
        _condition(status, False, "InvalidSpec", f"{decision.reason}, but {problem}")
        plan.status = status
        plan.events.append(("Warning", "ContinualInvalidSpec", problem))
        plan.log = f"{where}: continual round not started: {problem}"
        return plan
    number = (status.rounds[-1].round if status.rounds else 0) + 1
    plan.job = build_training_job(snap.body, em, number, settings)
    now = rfc3339(snap.now)
    status.rounds = [
        *status.rounds,
        ContinualRound(round=number, trigger=decision.reason, started_at=now, samples=decision.samples),
    ][-MAX_ROUNDS:]
    status.active_job = plan.job["metadata"]["name"]
    status.last_round_at = now
    _condition(status, True, "Training", f"round {number}: {decision.reason}; Job {status.active_job}")
    plan.status = status
    plan.outcome = "Started"
    plan.events.append(("Normal", "ContinualTriggered", f"round {number}: {decision.reason}"))
    plan.log = f"{where}: continual round {number} started ({decision.reason}); Job {status.active_job}"
    return plan


def round_origin(name: str, current: ContinualRound) -> RevisionOrigin:
    """The revision history's record of a passed round: why it was triggered and the numbers of its gate."""
    numbers = {
        "round": current.round,
        "samples": current.samples,
        "newAccuracyBefore": current.new_accuracy_before,
        "newAccuracyAfter": current.new_accuracy_after,
        "originalAccuracyBefore": current.original_accuracy_before,
        "originalAccuracyAfter": current.original_accuracy_after,
    }
    return RevisionOrigin(kind="ContinualLearning", name=name, reason=current.trigger[:500],
                          metrics={k: float(v) for k, v in numbers.items() if v is not None})


def finish(snap: Snapshot, status: ContinualStatus) -> Plan:
    """The round's Job ended (or disappeared): record the gate; on pass, point spec.source at the new model."""
    plan = Plan(status=status)
    status.active_job = ""
    if not status.rounds:
        return plan
    current = status.rounds[-1]
    report = snap.report
    gate = (report or {}).get("gate") or {}
    for field_, key in (
        ("new_accuracy_before", "new_before"),
        ("new_accuracy_after", "new_after"),
        ("original_accuracy_before", "original_before"),
        ("original_accuracy_after", "original_after"),
    ):
        if isinstance(gate.get(key), int | float):
            setattr(current, field_, round(float(gate[key]), 4))
    for dataset in ("new", "original"):
        for state in ("before", "after"):
            if isinstance(gate.get(f"{dataset}_{state}"), int | float):
                plan.gate[(dataset, state)] = float(gate[f"{dataset}_{state}"])
    current.message = str(
        (report or {}).get("message") or (job_state(snap.job).message if snap.job else "the Job disappeared")
    )[:1000]
    if report is not None and report.get("passed") and report.get("modelUri"):
        current.outcome = "Passed"
        current.model_uri = str(report["modelUri"])
        current.revision = (snap.em.status.revision or 0) + 1 if snap.em.status else None
        plan.source_patch = {
            "metadata": {
                "annotations": {
                    ANNOTATION_TRIGGER: current.trigger[:1000],
                    ANNOTATION_ROUND: str(current.round),
                    **origin_annotation(round_origin(snap.name, current), current.model_uri),
                }
            },
            "spec": {"source": {"uri": current.model_uri, "sha256": report.get("modelSha256")}},
        }
        _condition(
            status,
            True,
            "RevisionOpened",
            f"round {current.round} passed the gate ({current.message}); "
            "the retrained model is converted and rolled out as a new revision",
        )
        plan.events.append(("Normal", "ContinualGatePassed", f"round {current.round}: {current.message}"))
    else:
        current.outcome = "Rejected" if report is not None and "gate" in report else "Failed"
        _condition(
            status,
            False,
            current.outcome,
            f"round {current.round}: {current.message}; the current revision keeps serving",
        )
        plan.events.append(
            ("Warning", f"Continual{current.outcome}", f"round {current.round}: {current.message}")
        )
    status.rounds = [*status.rounds[:-1], current]
    plan.outcome = current.outcome
    plan.log = (
        f"EdgeModel {snap.namespace}/{snap.name}: continual round {current.round} {current.outcome}: "
        f"{current.message}"
    )
    return plan


async def act(runtime: Runtime, snap: Snapshot, plan: Plan) -> None:
    """Apply a plan: the Job first, then the new source, then status.continual (merge patch of that subtree)."""
    namespace, name = snap.namespace, snap.name
    m = metrics(runtime)
    if plan.drifting is not None:
        m.drifting.labels(namespace, name).set(plan.drifting)
    if plan.samples is not None:
        m.samples.labels(namespace, name).set(plan.samples)
    if plan.job is not None:
        await runtime.client.create(Paths.jobs(namespace), plan.job)
    if plan.source_patch is not None:
        await runtime.client.patch(Paths.edgemodel(namespace, name), plan.source_patch)
    if plan.status is not None:
        body = {"status": {"continual": plan.status.to_k8s()}}
        await runtime.client.patch(Paths.edgemodel_status(namespace, name), body)
    for (dataset, state), value in plan.gate.items():
        m.gain.labels(namespace, name, dataset, state).set(value)
    if plan.outcome:
        m.rounds.labels(namespace, name, plan.outcome).inc()
    for type_, reason, message in plan.events:
        emit(snap.body, type_, reason, message)
    if plan.log:
        log.info("%s", plan.log)


async def tick(runtime: Runtime, body: Mapping[str, Any]) -> None:
    """One look at one EdgeModel: observe -> decide -> act."""
    snap = await observe(runtime, body)
    if snap is not None:
        await act(runtime, snap, decide(snap, runtime.settings))


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Add the continual-learning timer to the operator's handlers."""

    @kopf.timer(
        *EDGEMODELS,
        id="continual",
        registry=registry,
        interval=runtime.settings.continual_tick_seconds,
        when=lambda spec, **_: bool((spec.get("continual") or {}).get("enabled")),
    )
    async def continual(body: kopf.Body, **_: Any) -> None:
        await tick(runtime, body)
