"""The training client of one node (edge side, one process per node): loads the node's data and the model, connects
to the aggregation server over TLS and trains locally each round; only model updates leave the node (with
``spec.secureAggregation`` only SecAgg+-masked ones, through ``grid_client``).

``python -m edgemodel.federated.client --node NAME --server HOST:PORT --ca ca.pem [--data FILE]`` with the object
in ``EDGEMODEL_FEDERATED_OBJECT``; exit 0 ok, 2 bad input (e.g. no data on the node), 1 retryable.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgemodel.api.federated import FederatedTraining
from edgemodel.federated import data as datasets
from edgemodel.federated import model as models
from edgemodel.federated.arguments import client_arguments
from edgemodel.federated.errors import EXIT_OK, FederatedError, Reason
from edgemodel.federated.runspec import load_object, write_termination

log = logging.getLogger(__name__)


def load_node_data(obj: FederatedTraining, node: str, data_file: Path | None, work: Path) -> datasets.Dataset:
    """The node's training set: ``data_file`` (spec.data.path as mounted) or spec.data.uri with {node} filled in."""
    spec = obj.spec.data
    if spec.uri is not None:
        uri = datasets.node_uri(spec.uri, node)
        path = datasets.fetch_file(uri, work / "data.npz", "spec.data.uri", Reason.DATA_MISSING)
        return datasets.load_npz(
            path, "spec.data.uri", spec.input_array, spec.labels_array, where=f"node {node}"
        )
    if data_file is None:
        raise FederatedError(Reason.INVALID_SPEC, "--data: give the mounted spec.data.path")
    return datasets.load_npz(
        data_file, "spec.data.path", spec.input_array, spec.labels_array, where=f"node {node}"
    )


def make_client(module: Any, data: datasets.Dataset, node: str) -> Any:
    """A Flower NumPyClient that trains ``module`` on ``data`` with the round's config."""
    from flwr.client import NumPyClient

    class NodeClient(NumPyClient):
        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            return {"node": node}

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
            models.set_weights(module, parameters)
            rnd = int(config.get("server_round", 0))
            loss = models.train(
                module,
                data,
                epochs=int(config.get("epochs", 1)),
                batch_size=int(config.get("batch_size", 32)),
                learning_rate=float(config.get("learning_rate", 0.05)),
                proximal_mu=float(config.get("proximal_mu", 0.0)),
                seed=rnd,
            )
            log.info("Trained round %d on %d samples (loss %.4f)", rnd, len(data), loss)
            return models.get_weights(module), len(data), {"train_loss": loss, "node": node}

        def evaluate(
            self, parameters: list[Any], config: dict[str, Any]
        ) -> tuple[float, int, dict[str, Any]]:
            models.set_weights(module, parameters)
            loss, accuracy = models.evaluate(module, data)
            return loss, len(data), {"accuracy": accuracy}

    return NodeClient().to_client()


def run_client(obj: FederatedTraining, args: argparse.Namespace, work: Path) -> None:
    data = load_node_data(obj, args.node, args.data, work)
    module = models.load_module(
        datasets.fetch_file(obj.spec.model.uri, work / "model.pt", "spec.model.uri", Reason.MODEL_UNREADABLE),
        "spec.model.uri",
    )
    if obj.spec.secure_aggregation:
        from edgemodel.federated.grid_client import run_grid_client

        log.info("Connecting node %s to %s for secure aggregation (%s)", args.node, args.server,
                 "TLS" if args.ca else "no TLS")
        run_grid_client(
            args.server,
            args.ca,
            args.node,
            lambda _: make_client(module, data, args.node),
            args.connect_wait_seconds,
            samples=len(data),
        )
        return
    from flwr.compat.client.app import start_client

    root = args.ca.read_bytes() if args.ca else None
    log.info("Connecting node %s to %s (%s)", args.node, args.server, "TLS" if root else "no TLS")
    start_client(
        server_address=args.server,
        client=make_client(module, data, args.node),
        root_certificates=root,
        insecure=root is None,
        max_wait_time=args.connect_wait_seconds,
    )


def run(args: argparse.Namespace) -> int:
    try:
        obj = load_object()
        with tempfile.TemporaryDirectory(prefix="federated-client-") as tmp:
            run_client(obj, args, Path(tmp))
    except FederatedError as exc:
        log.error("Node %s cannot train (%s): %s", args.node, exc.reason.value, exc.message)
        write_termination(
            {"ok": False, "node": args.node, "reason": exc.reason.value, "message": exc.message}
        )
        return exc.exit_code
    log.info("Node %s finished federated training", args.node)
    write_termination({"ok": True, "node": args.node})
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="edgemodel federated client", description=__doc__.split("\n\n")[0])
    client_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
