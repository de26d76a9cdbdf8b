"""Where SecAgg+'s CPU goes: Flower's SecAggPlusWorkflow and secaggplus_mod for N nodes in one process, no transport.

Runs the same in-process harness as tests/federated/test_secagg_dropout.py (each node's ClientApp called directly)
with the product's knobs (shares to every node, reconstruction threshold ``--threshold`` of them) and a model of
``--params`` parameters; prints seconds per round and how much of it went to Shamir's secret sharing (pycryptodome,
split on the nodes and combined on the server), ECDH key agreement and mask generation: wall-clock timers around
Flower's own calls (Shamir runs in Flower's worker threads, which a profiler of the main thread does not see).

    .venv/bin/python -m bench.federated.secagg_cpu --nodes 10 --params 2762 --rounds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import ndarrays_to_parameters
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server import ServerConfig
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import DefaultWorkflow
from flwr.supercore.task_identity import TaskIdentity

import tests.federated.test_secagg_dropout as harness
from edgemodel.federated.survivors import SurvivorsOnly

node_side = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
server_side = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
TIMED = [
    (node_side, "create_shares", "Shamir split (nodes)"),
    (server_side, "combine_shares", "Shamir combine (server)"),
    (node_side, "generate_shared_key", "ECDH key agreement (nodes)"),
    (server_side, "generate_shared_key", "ECDH key agreement (server)"),
    (node_side, "pseudo_rand_gen", "masks (nodes)"),
    (server_side, "pseudo_rand_gen", "masks (server)"),
]
SPENT: dict[str, float] = defaultdict(float)


def _timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - started

    return wrapper


def train(nodes: int, params: int, rounds: int, threshold: float) -> float:
    """Seconds per round of SecAgg+ over ``nodes`` in-process nodes."""
    harness.NODES = list(range(1, nodes + 1))
    harness.SHAPE = (params,)
    strategy = harness._Recording(
        initial_parameters=ndarrays_to_parameters([np.zeros(harness.SHAPE, dtype=np.float32)]),
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=nodes,
    )  # fmt: skip
    context = LegacyContext(
        context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=rounds, round_timeout=60), strategy=strategy,
    )  # fmt: skip
    started = time.perf_counter()
    workflow = SurvivorsOnly(num_shares=1.0, reconstruction_threshold=threshold, timeout=60)
    DefaultWorkflow(fit_workflow=workflow)(harness._LocalGrid({}), context)
    assert sorted(strategy.rounds) == list(range(1, rounds + 1)), "a round was not aggregated"
    return (time.perf_counter() - started) / rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--params", type=int, default=2762, help="model parameters (the federated bench's MLP: 2,762)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.65)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, 1, SUPERLINK_NODE_ID
    train(args.nodes, args.params, 1, args.threshold)  # imports and first-use costs
    per_round = [train(args.nodes, args.params, args.rounds, args.threshold) for _ in range(args.repeats)]
    print(f"{args.nodes} nodes, {args.params} parameters: " + ", ".join(f"{s:.3f}" for s in per_round)
          + f" s per round (median {float(np.median(per_round)):.3f})")  # fmt: skip
    for module, name, label in TIMED:
        setattr(module, name, _timed(getattr(module, name), label))
    seconds = train(args.nodes, args.params, args.rounds, args.threshold) * args.rounds
    for label, spent in SPENT.items():
        print(f"  {label}: {spent / args.rounds:.3f} s per round ({100 * spent / seconds:.0f}%)")

if __name__ == "__main__":
    main()
