"""ServerApp and ClientApp of the SecAgg+ probe: FedAvg on a 64-32-10-sized parameter set, plain or SecAgg+.

SECURE=1 runs the fit rounds through Flower's SecAggPlusWorkflow (server) and secaggplus_mod (client);
SECURE=0 through the DefaultWorkflow alone. Each aggregated round appends "ROUND n results failures t" to $OUT.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

SHAPES = [(64, 32), (32,), (32, 10), (10,)]
SECURE = os.environ.get("SECURE", "1") == "1"


def _out(line: str) -> None:
    with open(os.environ["OUT"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


class _Client(NumPyClient):
    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        time.sleep(0.2)  # "training"
        return [p + 1.0 for p in parameters], 100, {}


def _client_fn(context: Context) -> Client:
    return _Client().to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod] if SECURE else [])
server_app = ServerApp()


class _Logged(FedAvg):
    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        out = super().aggregate_fit(server_round, results, failures)
        _out(f"ROUND {server_round} results={len(results)} failures={len(failures)} t={time.time():.3f}")
        return out


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["clients"])
    strategy = _Logged(
        initial_parameters=ndarrays_to_parameters([np.zeros(s, dtype=np.float32) for s in SHAPES]),
        min_fit_clients=n - 1, min_available_clients=n - 1, fraction_fit=1.0, fraction_evaluate=0.0,
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=int(context.run_config["rounds"]), round_timeout=20),
        strategy=strategy,
    )
    fit = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=max(2, n - 1), timeout=20) if SECURE else None
    _out(f"START t={time.time():.3f}")
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    _out(f"DONE t={time.time():.3f}")
