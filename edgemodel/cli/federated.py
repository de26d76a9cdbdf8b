"""``edgemodel federated server|client``: the two sides of a FederatedTraining (needs edgemodel[convert])."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "federated",
        help="run the aggregation server or a node's training client of a FederatedTraining",
        description="Federated learning with Flower: the server in the cloud, one client per node.",
    )
    sides = p.add_subparsers(dest="side", metavar="SIDE", required=True)
    from edgemodel.federated.arguments import client_arguments, server_arguments

    server_arguments(sides.add_parser("server", help="the aggregation server (one per FederatedTraining)"))
    client_arguments(sides.add_parser("client", help="the training client of one node"))


def run(args: argparse.Namespace) -> int:
    if args.side == "server":
        from edgemodel.federated import server

        return server.run(args)
    from edgemodel.federated import client

    return client.run(args)
