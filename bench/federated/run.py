"""Federated learning benchmark: digits over 10 client processes (Flower server + clients, TLS), IID and non-IID
(2 classes per node) against centralised training, and 30% of the clients killed every round.

    nice -n 10 .venv/bin/python bench/federated/run.py [--nodes 10] [--out bench/results/federated.json]

Scenarios: centralised (same model, same optimiser, all data in one place); IID (target: within 1 pp of centralised
in <= 10 rounds); non-IID, 2 classes per node (<= 50 rounds); IID with 3 of 10 clients SIGKILLed in every round
(and restarted: they rejoin when up again) with spec.maxDropFraction 0.5; the same with maxDropFraction 0, i.e. a
design that needs every selected client's update (Sedna-like): its rounds are never aggregated. ``iid_secure`` and
``dropout30_secure`` are iid and dropout30 with spec.secureAggregation (SecAgg+); the run prints the ratio of mean
round times secure / plain for every pair it ran (interleave them with --only iid iid_secure iid iid_secure).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from edgemodel_dev.federated_digits import INPUT, LABELS, write_digits  # noqa: E402
from edgemodel_operator.federated_pki import make_server_tls  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
LR = 0.1
BATCH = 16
EPOCHS = 10


def centralised(files: Any, epochs: int) -> float:
    """Final accuracy of the same untrained model trained on the union of the shards (the same SGD, batch and
    learning rate) for ``epochs`` epochs."""
    import numpy as np

    from edgemodel.federated import model as models
    from edgemodel.federated.data import Dataset

    shards = [np.load(p) for p in files.shards.values()]
    data = Dataset(
        np.concatenate([s[INPUT] for s in shards]).astype(np.float32),
        np.concatenate([s[LABELS] for s in shards]),
    )
    val = np.load(files.validation)
    validation = Dataset(val[INPUT].astype(np.float32), val[LABELS])
    module = models.load_module(files.model, "model")
    for epoch in range(epochs):
        models.train(module, data, epochs=1, batch_size=BATCH, learning_rate=LR, seed=epoch)
    return models.evaluate(module, validation)[1]


class Federation:
    """One server and one client process per node on 127.0.0.1, TLS with a throwaway CA."""

    def __init__(self, work: Path, files: Any, spec: dict[str, Any], port: int) -> None:
        self.work, self.files, self.port = work, files, port
        work.mkdir(parents=True, exist_ok=True)
        make_server_tls("bench", ["127.0.0.1"]).write_dir(work)
        obj = {
            "apiVersion": "edgemodel.io/v1alpha1",
            "kind": "FederatedTraining",
            "metadata": {"name": work.name, "namespace": "bench", "uid": "bench"},
            "spec": {
                "model": {"uri": files.model.resolve().as_uri()},
                "data": {"path": "/unused/train.npz"},
                "port": port,
                **spec,
            },
        }
        self.env = {
            **os.environ,
            "EDGEMODEL_FEDERATED_OBJECT": json.dumps(obj),
            "OMP_NUM_THREADS": "1",
            "EDGEMODEL_TERMINATION_LOG": str(work / "termination.json"),
        }
        self.status_file = work / "status.json"
        self.clients: dict[str, subprocess.Popen[bytes]] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        log = (self.work / "server.log").open("ab")
        self.server = subprocess.Popen(
            [
                PY,
                "-m",
                "edgemodel.federated.server",
                "--bind",
                "127.0.0.1",
                "--tls-dir",
                str(self.work),
                "--output",
                str(self.work / "trained.pt"),
                "--status-file",
                str(self.status_file),
                "--linger-seconds",
                "0",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for node in self.files.shards:
            self.start_client(node)

    def start_client(self, node: str) -> None:
        log = (self.work / f"{node}.log").open("ab")
        self.clients[node] = subprocess.Popen(
            [
                PY,
                "-m",
                "edgemodel.federated.client",
                "--node",
                node,
                "--server",
                f"127.0.0.1:{self.port}",
                "--ca",
                str(self.work / "ca.pem"),
                "--data",
                str(self.files.shards[node]),
            ],
            env={**self.env, "EDGEMODEL_TERMINATION_LOG": str(self.work / f"{node}.termination")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def run(self, timeout: float, kill_per_round: int = 0, seed: int = 0) -> dict[str, Any]:
        """Until the server exits; with ``kill_per_round``, SIGKILL that many training clients shortly after each
        round starts (and restart them at once: they rejoin when they are up)."""
        rng = random.Random(seed)
        assert self.server is not None
        started = time.monotonic()
        killed_in: set[int] = set()
        while self.server.poll() is None and time.monotonic() - started < timeout:
            time.sleep(0.1)
            st = self.status()
            rnd = len(st.get("rounds") or []) + 1
            if kill_per_round and st.get("state") == "Training" and rnd not in killed_in:
                time.sleep(0.3)  # into the round's local training
                alive = [n for n, p in self.clients.items() if p.poll() is None]
                for node in rng.sample(alive, min(kill_per_round, len(alive))):
                    self.clients[node].send_signal(signal.SIGKILL)
                    self.clients[node].wait()
                    self.kills += 1
                    self.start_client(node)
                killed_in.add(rnd)
        elapsed = time.monotonic() - started
        self.stop()
        return {"seconds": round(elapsed, 1), "status": self.status(), "kills": self.kills}

    def stop(self) -> None:
        for proc in [*self.clients.values(), self.server]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def summarise(name: str, result: dict[str, Any], target: float) -> dict[str, Any]:
    rounds = result["status"].get("rounds") or []
    reached = next((r["round"] for r in rounds if (r.get("accuracy") or 0) >= target), None)
    aggregated = [r for r in rounds if r.get("aggregated")]
    row = {
        "scenario": name,
        "rounds": len(rounds),
        "rounds_to_target": reached,
        "final_accuracy": round(rounds[-1]["accuracy"], 4) if rounds else None,
        "aggregated_rounds": len(aggregated),
        "mean_clients": round(sum(len(r["participating"]) for r in rounds) / max(len(rounds), 1), 2),
        "dropped_total": sum(len(r["dropped"]) for r in rounds),
        "mean_round_s": round(sum(r["seconds"] for r in rounds) / max(len(rounds), 1), 3),
        "bytes_per_round": round(sum(r["bytesExchanged"] for r in rounds) / max(len(rounds), 1)),
        "wall_s": result["seconds"],
        "kills": result["kills"],
    }
    print(json.dumps(row), flush=True)
    return row


def _secure_ratios(rows: list[dict[str, Any]]) -> None:
    """Mean round time with secureAggregation over the same scenario's plain mean, for each pair that ran."""
    for plain in ("iid", "dropout30"):
        a = [r["mean_round_s"] for r in rows if r["scenario"] == plain]
        b = [r["mean_round_s"] for r in rows if r["scenario"] == f"{plain}_secure"]
        if a and b:
            ratio = (sum(b) / len(b)) / (sum(a) / len(a))
            row = {"scenario": f"{plain}: secure/plain round time", "ratio": round(ratio, 2), "plain": a, "secure": b}
            print(json.dumps(row), flush=True)
            rows.append(row)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgemodel-bench-federated"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "federated.json")
    p.add_argument("--port", type=int, default=29460)
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="scenarios to run, in this order, repeats allowed (iid noniid dropout30 allwait_dropout30 iid_secure "
        "dropout30_secure), e.g. --only iid iid_secure iid iid_secure to interleave plain and secure",
    )
    args = p.parse_args()
    nodes = [f"edge-{i}" for i in range(args.nodes)]
    iid = write_digits(args.work / "iid", nodes, iid=True, arch="mlp")
    noniid = write_digits(args.work / "noniid", nodes, iid=False, arch="mlp")
    central = centralised(iid, epochs=40)
    target = central - 0.01
    print(
        json.dumps({"scenario": "centralised", "accuracy": round(central, 4), "target": round(target, 4)}),
        flush=True,
    )
    base = {
        "training": {"epochs": EPOCHS, "batchSize": BATCH, "learningRate": LR},
        "roundTimeoutSeconds": 30,
        "minClients": args.nodes,
    }
    scenarios: list[tuple[str, Any, dict[str, Any], int, int]] = [
        ("iid", iid, {"rounds": 10}, 0, 300),
        # non-IID: fewer local epochs and a smaller step (less client drift)
        (
            "noniid",
            noniid,
            {"rounds": 50, "training": {"epochs": 5, "batchSize": BATCH, "learningRate": 0.05}},
            0,
            900,
        ),
        ("dropout30", iid, {"rounds": 20, "minClients": args.nodes // 2, "maxDropFraction": 0.5}, 3, 600),
        (
            "allwait_dropout30",
            iid,
            {"rounds": 8, "minClients": args.nodes // 2, "maxDropFraction": 0.0},
            3,
            300,
        ),
    ]
    # The same settings with spec.secureAggregation (Flower's SecAgg+ over the product's HTTPS grid).
    scenarios += [(f"{name}_secure", files, {**spec, "secureAggregation": True}, kills, timeout)
                  for name, files, spec, kills, timeout in scenarios if name in ("iid", "dropout30")]
    by_name = {s[0]: s for s in scenarios}
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    order = [by_name[n] for n in args.only] if args.only else scenarios
    rows: list[dict[str, Any]] = [{"scenario": "centralised", "accuracy": round(central, 4)}]
    for i, (name, files, spec, kills, timeout) in enumerate(order):
        full = {
            **base,
            **spec,
            "validation": {"dataUri": files.validation.resolve().as_uri(), "targetAccuracy": target},
        }
        if kills:  # no early stop: show the whole course under dropouts
            full["validation"] = {"dataUri": files.validation.resolve().as_uri()}
        fed = Federation(args.work / f"{name}-{i}", files, full, args.port + 2 * i)
        fed.start()
        rows.append(summarise(name, fed.run(timeout, kill_per_round=kills), target))
    _secure_ratios(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"nodes": args.nodes, "centralised": central, "target": target, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
