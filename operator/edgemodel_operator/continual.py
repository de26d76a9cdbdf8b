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
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from edgemodel.api import ConditionStatus, EdgeModel, set_condition
from edgemodel.api.continual import AgentContinualState, ContinualRound, ContinualStatus
from edgemodel.continual.triggers import AgentReport, Decision, evaluate
from edgemodel_operator.constants import EDGEMODELS, LABEL_MODEL, STORE_TOKEN_KEY
from edgemodel_operator.jobs import CONTAINER_SECURITY, JobPhase, converter_pod_security, job_state
from edgemodel_operator.kube import Paths
from edgemodel_operator.runtime import Runtime
from edgemodel_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

TICK_SECONDS = 15.0
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


def reports_for(agents: Sequence[Mapping[str, Any]], namespace: str, name: str) -> list[AgentReport]:
    """The ``status.continual`` entries of this model in the EdgeAgents (malformed entries are skipped)."""
    out: list[AgentReport] = []
    for agent in agents:
        node = (agent.get("metadata") or {}).get("name", "")
        for entry in (agent.get("status") or {}).get("continual") or []:
            if (
                not isinstance(entry, dict)
                or entry.get("name") != name
                or entry.get("namespace", namespace) != namespace
            ):
                continue
            try:
                out.append(AgentReport(node, AgentContinualState.model_validate(entry)))
            except ValidationError as exc:
                log.warning(
                    "EdgeAgent %s reports a malformed continual entry for %s/%s: %s",
                    node,
                    namespace,
                    name,
                    exc,
                )
    return out


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


async def _write(runtime: Runtime, namespace: str, name: str, status: ContinualStatus) -> None:
    body = {"status": {"continual": status.to_k8s()}}
    await runtime.client.patch(Paths.edgemodel_status(namespace, name), body)


def _condition(status: ContinualStatus, value: bool, reason: str, message: str) -> None:
    status.conditions = set_condition(
        status.conditions,
        CONDITION,
        ConditionStatus.TRUE if value else ConditionStatus.FALSE,
        reason,
        message[:1000],
    )


async def tick(runtime: Runtime, body: Mapping[str, Any]) -> None:
    """One look at one EdgeModel: follow the running round, or start one when a trigger fires."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", "default"), meta.get("name", "")
    try:
        em = EdgeModel.model_validate(dict(body))
    except ValidationError:
        return  # the reconciler reports an invalid spec
    if not em.spec.continual.enabled:
        return
    m = metrics(runtime)
    status = (em.status.continual if em.status and em.status.continual else None) or ContinualStatus()
    if status.active_job:
        await follow(runtime, body, em, status)
        return
    agents = await runtime.client.list(Paths.edgeagents())
    reports = reports_for(agents, namespace, name)
    m.drifting.labels(namespace, name).set(sum(1 for r in reports if r.state.drift_alarm))
    m.samples.labels(namespace, name).set(sum(r.state.labelled_captured for r in reports))
    decision: Decision = evaluate(
        em.spec.continual, reports, status, now_utc(), em.status.revision if em.status else None
    )
    if not decision.fire:
        waiting = decision.reason
        old = next((c for c in status.conditions if c.type == CONDITION), None)
        if waiting and (old is None or old.message != waiting[:1000]):
            _condition(status, False, "Waiting", waiting)
            await _write(runtime, namespace, name, status)
            log.info("EdgeModel %s/%s: continual learning waits: %s", namespace, name, waiting)
        return
    problem = missing_inputs(em)
    if problem:
        _condition(status, False, "InvalidSpec", f"{decision.reason}, but {problem}")
        await _write(runtime, namespace, name, status)
        emit(body, "Warning", "ContinualInvalidSpec", problem)
        return
    await start_round(runtime, body, em, status, decision)


async def start_round(
    runtime: Runtime, body: Mapping[str, Any], em: EdgeModel, status: ContinualStatus, decision: Decision
) -> None:
    meta = body["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    number = (status.rounds[-1].round if status.rounds else 0) + 1
    job = build_training_job(body, em, number, runtime.settings)
    await runtime.client.create(Paths.jobs(namespace), job)
    now = rfc3339(now_utc())
    status.rounds = [
        *status.rounds,
        ContinualRound(round=number, trigger=decision.reason, started_at=now, samples=decision.samples),
    ][-MAX_ROUNDS:]
    status.active_job = job["metadata"]["name"]
    status.last_round_at = now
    _condition(status, True, "Training", f"round {number}: {decision.reason}; Job {status.active_job}")
    await _write(runtime, namespace, name, status)
    metrics(runtime).rounds.labels(namespace, name, "Started").inc()
    emit(body, "Normal", "ContinualTriggered", f"round {number}: {decision.reason}")
    log.info(
        "EdgeModel %s/%s: continual round %d started (%s); Job %s",
        namespace,
        name,
        number,
        decision.reason,
        status.active_job,
    )


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


async def follow(runtime: Runtime, body: Mapping[str, Any], em: EdgeModel, status: ContinualStatus) -> None:
    """Check the round's Job; when it ended, record the gate and (on pass) point spec.source at the new model."""
    meta = body["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    job = await runtime.client.get(Paths.job(namespace, status.active_job), missing_ok=True)
    current = status.rounds[-1] if status.rounds else None
    if job is not None and job_state(job).phase == JobPhase.RUNNING:
        return
    m = metrics(runtime)
    report = await _report(runtime, namespace, name, current.round) if current is not None else None
    if current is None:
        status.active_job = ""
        await _write(runtime, namespace, name, status)
        return
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
                m.gain.labels(namespace, name, dataset, state).set(float(gate[f"{dataset}_{state}"]))
    current.message = str(
        (report or {}).get("message") or (job_state(job).message if job else "the Job disappeared")
    )[:1000]
    if report is not None and report.get("passed") and report.get("modelUri"):
        current.outcome = "Passed"
        current.model_uri = str(report["modelUri"])
        current.revision = (em.status.revision or 0) + 1 if em.status else None
        patch = {
            "metadata": {
                "annotations": {
                    ANNOTATION_TRIGGER: current.trigger[:1000],
                    ANNOTATION_ROUND: str(current.round),
                }
            },
            "spec": {"source": {"uri": current.model_uri, "sha256": report.get("modelSha256")}},
        }
        await runtime.client.patch(Paths.edgemodel(namespace, name), patch)
        _condition(
            status,
            True,
            "RevisionOpened",
            f"round {current.round} passed the gate ({current.message}); "
            "the retrained model is converted and rolled out as a new revision",
        )
        emit(body, "Normal", "ContinualGatePassed", f"round {current.round}: {current.message}")
    else:
        current.outcome = "Rejected" if report is not None and "gate" in report else "Failed"
        _condition(
            status,
            False,
            current.outcome,
            f"round {current.round}: {current.message}; the current revision keeps serving",
        )
        emit(body, "Warning", f"Continual{current.outcome}", f"round {current.round}: {current.message}")
    status.active_job = ""
    status.rounds = [*status.rounds[:-1], current]
    await _write(runtime, namespace, name, status)
    m.rounds.labels(namespace, name, current.outcome).inc()
    log.info(
        "EdgeModel %s/%s: continual round %d %s: %s",
        namespace,
        name,
        current.round,
        current.outcome,
        current.message,
    )


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Add the continual-learning timer to the operator's handlers."""

    @kopf.timer(
        *EDGEMODELS,
        id="continual",
        registry=registry,
        interval=TICK_SECONDS,
        when=lambda spec, **_: bool((spec.get("continual") or {}).get("enabled")),
    )
    async def continual(body: kopf.Body, **_: Any) -> None:
        await tick(runtime, body)
