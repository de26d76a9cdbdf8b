"""Flower 1.42's SecAgg+ with nodes that die before share-keys: halts as is, aggregates the survivors
with the product's ``SurvivorsOnly`` (edgemodel/federated/survivors.py).

The protocol runs for real (SecAggPlusWorkflow in a DefaultWorkflow, secaggplus_mod on each ClientApp);
only the transport is replaced by an in-process Grid that calls each node's ClientApp directly. A
"killed" node keeps being listed by the Grid (its heartbeat has not expired yet) but never answers again,
which is what a SIGKILLed SuperNode looks like to the ServerApp until the SuperLink expires it.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from edgemodel.federated.survivors import SurvivorsOnly

NODES = list(range(1, 11))  # 10 nodes, as in the benchmark
SHAPE = (4, 3)


@pytest.fixture(autouse=True)
def _serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What flwr-serverapp sets before running a ServerApp (messages take their run and source from it)."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


class _Node(NumPyClient):
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        # Node k sends 0.1 * k everywhere, weighted by 10 * k samples.
        return [np.full_like(p, 0.1 * self.node_id) for p in parameters], 10 * self.node_id, {}


def _client_app(node_id: int) -> ClientApp:
    def client_fn(context: Context) -> Client:
        return _Node(node_id).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


class _LocalGrid(Grid):
    """Delivers each message to its node's ClientApp in-process; a node past its last message stays silent."""

    def __init__(self, last_message: dict[int, int]) -> None:
        self._run = Run.create_empty(run_id=1)
        self.apps = {n: _client_app(n) for n in NODES}
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES
        }
        self.received = dict.fromkeys(NODES, 0)
        self.last_message = last_message  # node -> number of messages it answers before it is killed
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(NODES)  # killed nodes included: their heartbeat has not expired

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_run_id"] = 1
            ids.append(msg_id)
            node = msg.metadata.dst_node_id
            self.received[node] += 1
            if self.received[node] <= self.last_message.get(node, 10**9):
                TaskIdentity.node_id = node  # as in that node's flwr-clientapp process
                try:
                    # A copy, as after the wire: the workflow shares one RecordDict between messages.
                    self.replies[msg_id] = copy.deepcopy(self._call(node, copy.deepcopy(msg)))
                finally:
                    TaskIdentity.node_id = SUPERLINK_NODE_ID
        return ids

    def _call(self, node: int, msg: Message) -> Message:
        """The node's ClientApp; an exception becomes an error reply, as flwr-clientapp sends it."""
        try:
            return self.apps[node](message=msg, context=self.contexts[node])
        except Exception as exc:  # the runtime turns any ClientApp exception into an Error reply
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc)), reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


class _Recording(FedAvg):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, tuple[list[int], float]] = {}

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        assert params is not None
        value = float(np.mean(parameters_to_ndarrays(params)[0]))
        self.rounds[server_round] = (sorted(int(proxy.node_id) for proxy, _ in results), value)
        return params, metrics


def _train(workflow_cls: type[SecAggPlusWorkflow], last_message: dict[int, int]) -> dict[int, tuple[list[int], float]]:
    strategy = _Recording(
        initial_parameters=ndarrays_to_parameters([np.zeros(SHAPE, dtype=np.float32)]),
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=len(NODES),
    )
    context = LegacyContext(
        context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=2, round_timeout=5), strategy=strategy,
    )
    workflow = workflow_cls(num_shares=len(NODES), reconstruction_threshold=6, timeout=5)
    started = time.monotonic()
    DefaultWorkflow(fit_workflow=workflow)(_LocalGrid(last_message), context)
    assert time.monotonic() - started < 60
    return strategy.rounds


def _weighted_mean(nodes: list[int]) -> float:
    return sum(0.1 * n * 10 * n for n in nodes) / sum(10 * n for n in nodes)


# SecAgg+ sends 4 messages per node per round (setup, share-keys, collect masked vectors, unmask):
# answering 4 messages = alive for round 1, killed right after it (before round 2's setup).
KILLED_BEFORE_SETUP = {8: 4, 9: 4, 10: 4}  # 30% of the nodes
KILLED_AFTER_SHARE_KEYS = {8: 6, 9: 6, 10: 6}  # answer round 2's setup and share-keys, then die


def test_no_dropout_secagg_aggregates_the_weighted_mean() -> None:
    rounds = _train(SecAggPlusWorkflow, {})
    assert sorted(rounds) == [1, 2]
    for nodes, value in rounds.values():
        assert nodes == NODES
        assert value == pytest.approx(_weighted_mean(NODES), abs=1e-3)


def test_flower_secagg_halts_the_round_when_nodes_die_before_share_keys(caplog: pytest.LogCaptureFixture) -> None:
    rounds = _train(SecAggPlusWorkflow, KILLED_BEFORE_SETUP)
    assert sorted(rounds) == [1]  # round 2 halted
    assert "Not enough shares to recover secret in unmask vectors stage" in caplog.text


def test_survivors_only_aggregates_the_survivors_when_nodes_die_before_share_keys() -> None:
    rounds = _train(SurvivorsOnly, KILLED_BEFORE_SETUP)
    assert sorted(rounds) == [1, 2]
    nodes, value = rounds[2]
    assert nodes == list(range(1, 8))
    assert value == pytest.approx(_weighted_mean(list(range(1, 8))), abs=1e-3)


@pytest.mark.parametrize("workflow_cls", [SecAggPlusWorkflow, SurvivorsOnly])
def test_nodes_dying_after_share_keys_are_unmasked_by_both(workflow_cls: type[SecAggPlusWorkflow]) -> None:
    rounds = _train(workflow_cls, KILLED_AFTER_SHARE_KEYS)
    assert sorted(rounds) == [1, 2]
    nodes, value = rounds[2]
    assert nodes == list(range(1, 8))
    assert value == pytest.approx(_weighted_mean(list(range(1, 8))), abs=1e-3)
