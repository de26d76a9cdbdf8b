"""Secure aggregation (``spec.secureAggregation: true``): Flower's SecAgg+ workflow on the server, over the product's
HTTPS grid instead of Flower's Deployment Engine (no SuperLink/SuperNode: no process per message, no fixed polls).

The strategy is the plain path's TrackedStrategy (validation, /status, the target-accuracy stop, dropout bound),
driven by Flower's own ``default_init_params_workflow`` / ``default_centralized_evaluation_workflow`` and the fit
workflow ``SurvivorsOnly`` (SecAggPlusWorkflow that tolerates nodes dying before share-keys).
"""

from __future__ import annotations

import logging
import ssl
import time
import timeit

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import (
    default_centralized_evaluation_workflow,
    default_init_params_workflow,
)
from flwr.supercore.task_identity import TaskIdentity

from edgemodel.api.federated import FederatedTrainingSpec
from edgemodel.federated.grid import HttpGrid
from edgemodel.federated.grid_http import serve_grid
from edgemodel.federated.strategy import TrackedStrategy
from edgemodel.federated.survivors import SurvivorsOnly

log = logging.getLogger(__name__)

RUN_ID = 1
MIN_CLIENTS_WAIT = 86400
"""How long a round waits for spec.minClients nodes (Flower's own sample() waits as long)."""
FINISH_GRACE = 3.0
"""After the last round, how long the grid keeps answering so that polling nodes learn the run is over."""


DEFAULT_MAX_WEIGHT = 1000.0
MAJORITY = 0.65
"""Lowest reconstruction threshold, as a fraction of a round's nodes: Flower rounds ``f * n`` (at least 2), and 0.65
is the smallest round number that gives a strict majority for every round size (2 -> 2, 4 -> 3, 10 -> 6, 11 -> 7)."""


def reconstruction_threshold(max_drop_fraction: float) -> float:
    """SecAgg+'s reconstruction threshold as a fraction of a round's nodes: ``1 - spec.maxDropFraction``, never
    below a strict majority (:data:`MAJORITY`).

    The majority keeps SecAgg+'s guarantee against a server that lies about who dropped (it cannot collect both the
    mask-key shares and the self-mask shares of a live node). Within ``1 - threshold`` dropouts every round can be
    unmasked; with ``maxDropFraction`` above that, a round that loses more nodes is not aggregated (see
    :func:`tolerated_drop_fraction`).
    """
    return round(max(1.0 - max_drop_fraction, MAJORITY), 6)


def tolerated_drop_fraction(max_drop_fraction: float) -> float:
    """Share of a round's nodes that may drop and still be unmasked with secure aggregation."""
    return round(min(max_drop_fraction, 1.0 - MAJORITY), 6)


def max_weight(largest_samples: int) -> float:
    """SecAgg+'s ``max_weight`` for a round: the largest declared sample count rounded up to a power of two.

    Each node scales its update by ``samples / max_weight`` before quantising it into +-``clipping_range``; a
    node above ``max_weight`` would be clipped (a wrong sum, only a warning in the node's log), one far below
    loses precision. Flower's default (1000) stays when no node declared a count.
    """
    if largest_samples <= 0:
        return DEFAULT_MAX_WEIGHT
    return float(1 << (largest_samples - 1).bit_length())


def fit_workflow(spec: FederatedTrainingSpec) -> SurvivorsOnly:
    """SecAgg+ with shares to every node of the round (``num_shares`` 1.0 = all sampled nodes), the threshold above
    and ``spec.roundTimeoutSeconds`` as the timeout of each of its four stages."""
    return SurvivorsOnly(
        num_shares=1.0,
        reconstruction_threshold=reconstruction_threshold(spec.max_drop_fraction),
        timeout=float(spec.round_timeout_seconds),
    )


def run_rounds(
    grid: HttpGrid, context: LegacyContext, workflow: SurvivorsOnly, tracked: TrackedStrategy, min_clients: int
) -> None:
    """DefaultWorkflow's loop (Flower's init, fit and centralised-evaluation steps), stopping at the target."""
    thread, stop, registered = start_update_client_manager_thread(grid, context.client_manager)
    registered.wait()
    try:
        default_init_params_workflow(grid, context)
        cfg = ConfigRecord({WorkflowKey.START_TIME: timeit.default_timer()})
        context.state.config_records[MAIN_CONFIGS_RECORD] = cfg
        for current_round in range(1, context.config.num_rounds + 1):
            cfg[WorkflowKey.CURRENT_ROUND] = current_round
            # The strategy sizes a round by the nodes available when it asks: let spec.minClients connect first.
            context.client_manager.wait_for(min_clients, timeout=MIN_CLIENTS_WAIT)
            workflow.max_weight = max_weight(grid.largest_samples())
            workflow(grid, context)
            default_centralized_evaluation_workflow(grid, context)
            if tracked.stopped_at is not None:
                break
    finally:
        stop.set()
        thread.join()


def train_securely(
    spec: FederatedTrainingSpec, tracked: TrackedStrategy, bind: str, tls: ssl.SSLContext | None
) -> None:
    """Serve the grid on spec.port and run every round with SecAgg+; returns when training is over."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE_ID, 0
    grid = HttpGrid(run_id=RUN_ID)
    manager = SimpleClientManager()
    context = LegacyContext(
        context=Context(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=spec.rounds, round_timeout=float(spec.round_timeout_seconds)),
        strategy=tracked,
        client_manager=manager,
    )

    def registered(node_id: int, name: str) -> None:
        tracked.names[str(node_id)] = name  # the node's name for status.rounds (the proxy's cid is its id)
        manager.num_available()  # re-reads the grid's nodes now (not at the next 5 s tick) and wakes a waiting round

    grid.on_register = registered
    workflow = fit_workflow(spec)
    tolerated = tolerated_drop_fraction(spec.max_drop_fraction)
    log.info(
        "Secure aggregation (SecAgg+): shares to all nodes of a round, reconstruction threshold %.0f%% of them "
        "(a round may lose up to %.0f%% of its nodes%s), %d s per stage",
        100 * float(workflow.reconstruction_threshold),
        100 * tolerated,
        "" if tolerated >= spec.max_drop_fraction
        else f"; spec.maxDropFraction {spec.max_drop_fraction:g} is capped: the threshold stays a strict majority",
        spec.round_timeout_seconds,
    )
    with serve_grid(grid, bind, spec.port, tls):
        try:
            run_rounds(grid, context, workflow, tracked, spec.min_clients)
        finally:
            grid.finish()
            deadline = time.monotonic() + FINISH_GRACE
            while grid.not_told() and time.monotonic() < deadline:
                time.sleep(0.1)
