"""Prometheus metrics of federated training (in the operator's registry, served on its /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgemodel.api.federated import RoundRecord


class FederatedMetrics:
    """Per training: last round, accuracy, clients per state; totals: bytes, rounds, trainings by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "training"]
        self.trainings = Counter(
            "edgemodel_federated_trainings_total",
            "FederatedTrainings by outcome (started, succeeded, failed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("started", "succeeded", "failed"):  # exported at 0 from the start: increase() sees the 1st
            self.trainings.labels(outcome=outcome)
        self.round = Gauge(
            "edgemodel_federated_round",
            "Last finished round of a FederatedTraining.",
            labels,
            registry=registry,
        )
        self.accuracy = Gauge(
            "edgemodel_federated_validation_accuracy",
            "Validation accuracy of the global model after the last round.",
            labels,
            registry=registry,
        )
        self.clients = Gauge(
            "edgemodel_federated_clients",
            "Clients of the last round by state (participating, dropped).",
            [*labels, "state"],
            registry=registry,
        )
        self.bytes = Counter(
            "edgemodel_federated_bytes_total",
            "Model bytes exchanged with the clients.",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            "edgemodel_federated_dropped_clients_total",
            "Clients that failed or timed out in a round.",
            labels,
            registry=registry,
        )
        self.round_seconds = Histogram(
            "edgemodel_federated_round_seconds",
            "Wall time of one round.",
            labels,
            registry=registry,
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
        )

    def start(self, namespace: str, training: str) -> None:
        """Create a training's series at zero when it starts, so the first round is an increase that
        ``rate``/``increase`` see (a series born with its first observation shows no rate until the next)."""
        self.round.labels(namespace, training).set(0)
        for state in ("participating", "dropped"):
            self.clients.labels(namespace, training, state).set(0)
        self.bytes.labels(namespace, training)
        self.dropped.labels(namespace, training)
        self.round_seconds.labels(namespace, training)

    def observe_round(self, namespace: str, training: str, record: RoundRecord) -> None:
        self.round.labels(namespace, training).set(record.round)
        if record.accuracy is not None:
            self.accuracy.labels(namespace, training).set(record.accuracy)
        self.clients.labels(namespace, training, "participating").set(len(record.participating))
        self.clients.labels(namespace, training, "dropped").set(len(record.dropped))
        self.bytes.labels(namespace, training).inc(record.bytes_exchanged)
        self.dropped.labels(namespace, training).inc(len(record.dropped))
        self.round_seconds.labels(namespace, training).observe(record.seconds)
