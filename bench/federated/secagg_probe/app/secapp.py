"""ServerApp and ClientApp of the SecAgg+ probe: FedAvg on a 64-32-10-sized parameter set, plain or SecAgg+.

SECURE=1 runs the fit rounds through Flower's SecAggPlusWorkflow (server) and secaggplus_mod (client);
SECURE=0 through the DefaultWorkflow alone. Each aggregated round appends "ROUND n results failures t" to $OUT.
"""

from __future__ import annotations

import os
import time
import types
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

from edgemodel.federated.survivors import SurvivorsOnly

SHAPES = [(64, 32), (32,), (32, 10), (10,)]
SECURE = os.environ.get("SECURE", "1") == "1"
FAST_GRID = os.environ.get("FAST_GRID", "0") == "1"  # poll the SuperLink every 0.05 s instead of 3 s
FIX_DROPOUT = os.environ.get("FIX_DROPOUT", "0") == "1"  # see edgemodel/federated/survivors.py


def _out(line: str) -> None:
    with open(os.environ["OUT"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


class _Client(NumPyClient):
    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        if os.environ.get("TORCH_IN_FIT") == "1":
            import torch  # noqa: F401  # the product's client trains with torch: only the fit stage pays its import
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


def _send_and_receive(grid: Grid, messages: Any, *, timeout: float | None = None) -> list[Any]:
    """Grid.send_and_receive of flwr 1.42 (push, then pull until all replies or timeout), polling every 0.05 s."""
    t0 = time.time()
    ids = set(grid.push_messages(messages))
    sent, ret, end = len(ids), [], t0 + (timeout or 0.0)
    while timeout is None or time.time() < end:
        got = list(grid.pull_messages(ids))
        ret.extend(got)
        ids -= {m.metadata.reply_to_message_id for m in got}
        if not ids:
            break
        time.sleep(0.05)
    _out(f"STAGE sent={sent} replies={len(ret)} s={time.time() - t0:.2f} t={time.time():.3f}")
    return ret


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["clients"])
    strategy = _Logged(
        initial_parameters=ndarrays_to_parameters([np.zeros(s, dtype=np.float32) for s in SHAPES]),
        min_fit_clients=2, min_available_clients=int(os.environ.get("MIN_AVAILABLE", str(n - 1))), fraction_fit=1.0, fraction_evaluate=0.0,
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=int(context.run_config["rounds"]), round_timeout=float(os.environ.get("STAGE_TIMEOUT", "20"))),
        strategy=strategy,
    )
    if FAST_GRID:
        grid.send_and_receive = types.MethodType(_send_and_receive, grid)  # type: ignore[method-assign]
    threshold = int(os.environ.get("THRESHOLD", "0")) or max(2, n - 1)
    workflow = SurvivorsOnly if FIX_DROPOUT else SecAggPlusWorkflow
    fit = workflow(num_shares=n, reconstruction_threshold=threshold,
                   timeout=float(os.environ.get("STAGE_TIMEOUT", "20"))) if SECURE else None
    _out(f"START t={time.time():.3f}")
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    _out(f"DONE t={time.time():.3f}")
