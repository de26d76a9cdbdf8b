"""Strategy selection (Flower's FedAvg, FedProx, FedAdam) and a wrapper that records each round and enforces the
dropout bound and the accuracy target. Aggregation itself is always Flower's."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvg, FedProx
from flwr.server.strategy import Strategy as FlowerStrategy

from edgemodel.api.federated import FederatedTrainingSpec, RoundRecord, Strategy
from edgemodel.federated.progress import Progress

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]
PROPERTIES_TIMEOUT = 10.0
NODE_KEY = "node"


def _weighted_train_loss(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    total = sum(n for n, _ in metrics)
    if not total:
        return {}
    return {"train_loss": sum(n * float(m.get("train_loss", 0.0)) for n, m in metrics) / total}


def build_strategy(spec: FederatedTrainingSpec, initial: NDArrays, evaluate_fn: EvaluateFn) -> FlowerStrategy:
    """The Flower strategy ``spec.strategy`` names: every client connected is asked each round (fraction_fit 1.0);
    a round starts once spec.minClients are connected; evaluation is the cloud's (evaluate_fn), never federated."""
    common = {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": spec.min_clients,
        "min_evaluate_clients": 0,
        "min_available_clients": spec.min_clients,
        "evaluate_fn": evaluate_fn,
        "accept_failures": True,
        "initial_parameters": ndarrays_to_parameters(initial),
        "fit_metrics_aggregation_fn": _weighted_train_loss,
        "on_fit_config_fn": lambda rnd: {
            "server_round": rnd,
            "epochs": spec.training.epochs,
            "batch_size": spec.training.batch_size,
            "learning_rate": spec.training.learning_rate,
        },
    }
    name = spec.strategy.name
    if name == Strategy.FED_PROX:
        return FedProx(proximal_mu=spec.strategy.proximal_mu, **common)  # type: ignore[arg-type]
    if name == Strategy.FED_ADAM:
        return FedAdam(eta=spec.strategy.server_learning_rate, **common)  # type: ignore[arg-type]
    return FedAvg(**common)  # type: ignore[arg-type]


def parameter_bytes(parameters: Parameters) -> int:
    """Bytes of one serialised model (what one transfer costs)."""
    return sum(len(t) for t in parameters.tensors)


@dataclass
class _Round:
    number: int
    started: float
    selected: dict[str, str] = field(default_factory=dict)
    """cid -> node name."""
    bytes_exchanged: int = 0
    participating: list[str] = field(default_factory=list)
    aggregated: bool = True
    fitted: bool = False
    """aggregate_fit was called (a SecAgg+ round that halts before unmasking never calls it)."""
    train_loss: float | None = None


class TrackedStrategy(FlowerStrategy):
    """Delegates to a Flower strategy; records each round into :class:`Progress`, skips the aggregation of a round
    with more than ``max_drop_fraction`` of its clients dropped, and stops asking clients once the target is met."""

    def __init__(
        self,
        inner: FlowerStrategy,
        progress: Progress,
        max_drop_fraction: float,
        target_accuracy: float | None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.progress = progress
        self.max_drop_fraction = max_drop_fraction
        self.target_accuracy = target_accuracy
        self.names: dict[str, str] = {}
        self.current: _Round | None = None
        self.stopped_at: int | None = None
        self.last_accuracy: float | None = None
        self.last_parameters: Parameters | None = None
        self.last_round = 0

    def __repr__(self) -> str:
        return f"Tracked({self.inner!r})"

    def _node(self, proxy: ClientProxy, server_round: int) -> str:
        if proxy.cid not in self.names:
            try:
                res = proxy.get_properties(
                    GetPropertiesIns({}), timeout=PROPERTIES_TIMEOUT, group_id=server_round
                )
                self.names[proxy.cid] = str(res.properties.get(NODE_KEY, proxy.cid))
            except Exception as exc:  # a client that died meanwhile; it drops from the round below
                log.warning("Could not ask client %s for its node name (%s)", proxy.cid, exc)
                return proxy.cid
        return self.names[proxy.cid]

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        params = self.inner.initialize_parameters(client_manager)
        self.last_parameters = params
        return params

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if self.stopped_at is not None:
            return []
        self.progress.set_state("Training")
        pairs = self.inner.configure_fit(server_round, parameters, client_manager)
        started = time.monotonic()
        current = _Round(server_round, started)
        for proxy, ins in pairs:
            current.selected[proxy.cid] = self._node(proxy, server_round)
            current.bytes_exchanged += parameter_bytes(ins.parameters)
        self.current = current
        log.info(
            "Started round %d with %d clients: %s",
            server_round,
            len(pairs),
            ", ".join(sorted(current.selected.values())),
        )
        return pairs

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        current = self.current or _Round(server_round, time.monotonic())
        current.fitted = True
        for proxy, res in results:
            current.bytes_exchanged += parameter_bytes(res.parameters)
            node = str(res.metrics.get(NODE_KEY, current.selected.get(proxy.cid, proxy.cid)))
            self.names[proxy.cid] = node
            current.participating.append(node)
        selected = max(len(current.selected), len(results) + len(failures))
        dropped = selected - len(results)
        allowed = math.floor(self.max_drop_fraction * selected + 1e-9)
        if not results or dropped > allowed:
            current.aggregated = False
            log.warning(
                "Round %d: %d of %d clients dropped (at most %d allowed by spec.maxDropFraction); kept the "
                "global model",
                server_round,
                dropped,
                selected,
                allowed,
            )
            return None, {}
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if "train_loss" in metrics:
            current.train_loss = float(metrics["train_loss"])
        return params, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        result = self.inner.evaluate(server_round, parameters)
        accuracy = float(result[1].get("accuracy", 0.0)) if result else None
        if server_round == 0:
            self.progress.initial_accuracy = accuracy
            log.info(
                "Evaluated the initial model: accuracy %s", f"{accuracy:.4f}" if accuracy is not None else "-"
            )
            return result
        current = self.current
        if current is None or current.number != server_round:  # a round in which no client was asked
            return result
        self.current = None
        self.last_round, self.last_accuracy, self.last_parameters = server_round, accuracy, parameters
        selected_names = set(current.selected.values())
        self.progress.add_round(
            RoundRecord(
                round=server_round,
                participating=sorted(current.participating),
                dropped=sorted(selected_names - set(current.participating)),
                aggregated=current.aggregated and current.fitted,
                train_loss=current.train_loss,
                loss=result[0] if result else None,
                accuracy=accuracy,
                bytes_exchanged=current.bytes_exchanged,
                seconds=round(time.monotonic() - current.started, 3),
            )
        )
        if self.target_accuracy is not None and accuracy is not None and accuracy >= self.target_accuracy:
            self.stopped_at = server_round
            log.info(
                "Reached the target accuracy %.4f >= %.4f in round %d; stopping",
                accuracy,
                self.target_accuracy,
                server_round,
            )
        return result
