"""The round-tracking wrapper around Flower's strategies: dropout bound, per-round records, accuracy target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays

from edgemodel.api.federated import FederatedTrainingSpec
from edgemodel.federated.progress import Progress
from edgemodel.federated.strategy import TrackedStrategy, _Round, build_strategy


@dataclass
class FakeProxy:
    cid: str


def fit_res(value: float, n: int, node: str) -> FitRes:
    return FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters([np.full((2,), value, dtype=np.float32)]),
        n,
        {"node": node, "train_loss": value},
    )


def tracked(max_drop: float, target: float | None = None, accuracy: float = 0.5) -> TrackedStrategy:
    spec = FederatedTrainingSpec.model_validate(
        {
            "model": {"uri": "file:///m.pt"},
            "data": {"path": "/d/t.npz"},
            "validation": {"dataUri": "file:///v.npz"},
            "minClients": 1,
        }
    )

    def evaluate(rnd: int, weights: Any, config: Any) -> tuple[float, dict[str, Any]]:
        return 0.1, {"accuracy": accuracy}

    inner = build_strategy(spec, [np.zeros((2,), dtype=np.float32)], evaluate)
    return TrackedStrategy(inner, Progress(3, 10), max_drop, target)


def start_round(strategy: TrackedStrategy, number: int) -> None:
    strategy.current = _Round(
        number, 0.0, selected={"1": "edge-0", "2": "edge-1", "3": "edge-2"}, bytes_exchanged=24
    )


def test_aggregates_the_clients_that_answered_weighted_by_samples() -> None:
    strategy = tracked(max_drop=0.5)
    start_round(strategy, 1)
    results: list[Any] = [
        (FakeProxy("1"), fit_res(1.0, 10, "edge-0")),
        (FakeProxy("2"), fit_res(4.0, 30, "edge-1")),
    ]
    params, metrics = strategy.aggregate_fit(1, results, [TimeoutError("edge-2 timed out")])
    assert params is not None
    assert np.allclose(parameters_to_ndarrays(params)[0], 3.25)  # (10*1 + 30*4) / 40: Flower's FedAvg
    assert metrics["train_loss"] == 3.25
    strategy.evaluate(1, params)
    record = strategy.progress.records[-1]
    assert record.participating == ["edge-0", "edge-1"]
    assert record.dropped == ["edge-2"]
    assert record.aggregated
    assert record.accuracy == 0.5
    assert record.bytes_exchanged == 24 + sum(len(t) for _, r in results for t in r.parameters.tensors)


def test_a_round_with_too_many_dropped_clients_keeps_the_global_model() -> None:
    strategy = tracked(max_drop=0.34)
    start_round(strategy, 2)
    params, _ = strategy.aggregate_fit(
        2,
        [(FakeProxy("1"), fit_res(1.0, 10, "edge-0"))],  # type: ignore[list-item]
        [ConnectionError("killed"), ConnectionError("killed")],
    )
    assert params is None
    strategy.evaluate(2, Parameters(tensors=[], tensor_type="numpy.ndarray"))
    record = strategy.progress.records[-1]
    assert not record.aggregated
    assert record.dropped == ["edge-1", "edge-2"]


def test_reaching_the_target_stops_asking_clients() -> None:
    strategy = tracked(max_drop=0.5, target=0.5, accuracy=0.6)
    strategy.current = _Round(1, 0.0, selected={"1": "edge-0"})
    params, _ = strategy.aggregate_fit(1, [(FakeProxy("1"), fit_res(1.0, 10, "edge-0"))], [])  # type: ignore[list-item]
    assert params is not None
    strategy.evaluate(1, params)
    assert strategy.stopped_at == 1
    assert strategy.configure_fit(2, params, client_manager=None) == []  # type: ignore[arg-type]


def test_a_round_whose_aggregation_never_ran_is_recorded_as_not_aggregated() -> None:
    # A SecAgg+ round that halts before unmasking never calls aggregate_fit; the round is still recorded.
    strategy = tracked(max_drop=0.5)
    start_round(strategy, 3)
    strategy.evaluate(3, Parameters(tensors=[], tensor_type="numpy.ndarray"))
    record = strategy.progress.records[-1]
    assert record.round == 3
    assert not record.aggregated
    assert record.participating == []
