"""``edgemodel-dev demo``: the whole loop on one machine, no cluster needed (``make demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def accuracy_fraction(text: str) -> float:
    """``--target-accuracy``: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1], e.g. 0.92")
    return value


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the whole loop locally: emulated cluster, operator, 3 edge agents, Prometheus",
        description="Train a digits CNN, apply it as an EdgeModel with kubectl, watch it convert and roll out "
        "by canary to 3 simulated edge nodes, send real traffic, then roll out a slow revision and watch it "
        "roll back automatically; finally split the CNN between the edge nodes and a cloud node and take the cloud away. "
        "--chapter federated instead trains the model on 5 edge nodes' own non-IID data (FederatedTraining, FedAvg) "
        "and rolls the result out as the EdgeModel's next revision.",
    )
    p.add_argument("--workdir", type=Path, default=Path(".demo"), help="where state, models and logs go (reset at start; a non-empty folder the demo did not create is refused)")
    p.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of the live view (CI)")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--traffic-seconds", type=float, default=12.0, help="how long to send traffic to revision 1")
    p.add_argument("--epochs", type=int, default=40, help="training epochs of the digits CNN")
    p.add_argument("--no-split", action="store_true", help="skip the split-inference chapter (and the cloud node)")
    p.add_argument("--chapter", choices=("rollout", "federated"), default="rollout",
                   help="rollout (default): train, canary, rollback, split inference; federated: 5 edge nodes with "
                   "2 digit classes each train together (Flower FedAvg), the result rolls out as revision 2")
    p.add_argument("--target-accuracy", type=accuracy_fraction, default=0.92,
                   help="--chapter federated: stop training at this validation accuracy (default 0.92)")


def run(args: argparse.Namespace) -> int:
    import logging

    from rich.console import Console

    from edgemodel_dev.demo.runner import DemoOptions, run_demo
    from edgemodel_dev.demo.shutdown import SignalGuard

    logging.getLogger().setLevel(logging.WARNING)
    # SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C; a second one never cuts the shutdown short.
    guard = SignalGuard().install()
    console = Console(width=130) if args.plain else Console()
    result = run_demo(DemoOptions(
        workdir=args.workdir.resolve(), keep=args.keep, live=not args.plain, prometheus=not args.no_prometheus,
        traffic_seconds=args.traffic_seconds, epochs=args.epochs, split=not args.no_split,
        chapter=args.chapter, federated_target=args.target_accuracy,
    ), console, guard)
    if not result.ok:
        console.print(f"[bold red]demo failed:[/] {result.message}")
        return 1
    console.print(f"[bold green]demo finished:[/] {result.message} in {result.seconds:.0f} s")
    return 0
