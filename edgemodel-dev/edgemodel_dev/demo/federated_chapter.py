"""The demo's federated chapter (``edgemodel-dev demo --chapter federated``).

Five edge nodes each hold two digit classes (pathological non-IID) that never leave them. Revision 1 of the
EdgeModel ``digits`` is a small MLP trained in the cloud on 20 labelled images; a FederatedTraining (Flower
FedAvg: the operator's server and one client Pod per node, over TLS) trains it on the nodes' data until the
cloud-held validation set reaches the target; the operator makes the trained model the EdgeModel's source, so
revision 2 is converted, accuracy-gated and rolled out by canary like any other. The chapter then sends the
same held-out digits (seen by no training, stop condition or gate) to the agents serving each revision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.table import Table

from edgemodel_dev.demo.traffic import TrafficStats
from edgemodel_dev.net import free_port

if TYPE_CHECKING:
    from edgemodel_dev.demo.runner import Demo

EXAMPLE = Path(__file__).resolve().with_name("examples") / "digits-federatedtraining.yaml"
FT = ("edgemodel.io/v1alpha1", "FederatedTraining")
TRAINING = "digits-fl"
NODES: list[dict[str, Any]] = [
    {"sites": [f"shop-{i}"], "labels": {"edgemodel.io/tier": "standard"}, "cpu": "2", "memory": "4Gi"}
    for i in range(1, 6)
]
"""Five edge nodes, one shop each (no cloud node: the aggregation server runs as a Pod of the control plane)."""
OPERATOR_ENV = {
    "EDGEMODEL_FEDERATED_SERVER_HOST": "127.0.0.1",  # every emulated Pod shares the host's network
    "EDGEMODEL_FEDERATED_POLL_SECONDS": "0.5",
}


class ChapterFailed(RuntimeError):
    """Something the chapter waits for ended otherwise (the message says what and where to look)."""


@dataclass
class FederatedOutcome:
    """What the federated chapter found, for the summary."""

    data: str = ""
    revision1_torch_accuracy: float | None = None
    accuracy: dict[int, float | None] = field(default_factory=dict)
    """revision -> accuracy the agents served on the held-out digits"""
    requests: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    training: str = ""
    training_seconds: float = 0.0
    origin: str = ""


def training_manifest(model: Path, validation: Path, target: float, rounds: int, deadline_s: int) -> dict[str, Any]:
    """examples/digits-federatedtraining.yaml with its URIs pointed at the demo's files and a free port."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["model"]["uri"] = model.resolve().as_uri()
    spec["validation"]["dataUri"] = validation.resolve().as_uri()
    spec["validation"]["targetAccuracy"] = target
    spec["rounds"] = rounds
    spec["port"] = free_port()
    spec["deadlineSeconds"] = deadline_s
    return doc


def round_line(record: dict[str, Any], nodes: list[str]) -> str:
    """One round of ``status.rounds`` as a progress line (``nodes``: the training's selected nodes)."""
    accuracy = record.get("accuracy")
    participating = record.get("participating") or []
    dropped = record.get("dropped") or []
    absent = [n for n in nodes if n not in participating and n not in dropped]
    return (
        f"round {record['round']:>2}: {len(participating)}/{len(nodes)} nodes participating"
        + (f" ({', '.join(dropped)} dropped)" if dropped else "")
        + (f" ({', '.join(absent)} not connected)" if absent else "")
        + ("" if record.get("aggregated", True) else ", NOT aggregated")
        + ", validation accuracy " + ("-" if accuracy is None else f"{accuracy * 100:.2f}%")
        + f", {record.get('seconds', 0.0):.2f} s, {record.get('bytesExchanged', 0) / 1024:.0f} KiB exchanged"
    )


def origin_text(origin: dict[str, Any] | None) -> str:
    """A revision's ``origin`` (status.history) in one line."""
    if not origin:
        return "-"
    metrics = ", ".join(f"{k} {v:g}" for k, v in sorted((origin.get("metrics") or {}).items()))
    return f"{origin.get('kind')} {origin.get('name')} ({origin.get('reason', '')}" + (f"; {metrics})" if metrics else ")")


def failed_message(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"
                      and c.get("status") == "True"), None)
    return f"{condition['reason']}: {condition['message']}" if condition else f"phase {status.get('phase', '-')}"


class FederatedChapter:
    """The chapter's steps, on the stack of ``demo`` (started with :data:`NODES` and :data:`OPERATOR_ENV`)."""

    def __init__(self, demo: Demo, target: float = 0.92, rounds: int = 40, eval_seconds: float = 5.0) -> None:
        self.demo = demo
        self.stack = demo.stack
        self.target = target
        self.rounds = rounds
        self.eval_seconds = eval_seconds
        self.outcome = FederatedOutcome()

    def run(self) -> FederatedOutcome:
        from edgemodel_dev.demo.runner import TrafficThread
        from edgemodel_dev.federated_digits import write_demo_digits

        demo, stack, out = self.demo, self.stack, self.outcome
        nodes = stack.edge_nodes
        with demo.console.status("Cutting scikit-learn's digits into 2-class slices and training revision 1"):
            files = write_demo_digits(demo.opt.workdir / "models" / "federated", nodes)
        path = yaml.safe_load(EXAMPLE.read_text())["spec"]["data"]["path"]
        for node, shard in files.shards.items():
            stack.put_on_node(node, path, shard)
        demo.say(f"Each edge node holds 2 digit classes of its own at {path} (the data never leaves the node)")
        demo.console.print(self.data_table(files.shards, files.classes))
        out.data = ", ".join(f"{n} {'+'.join(map(str, c))}" for n, c in files.classes.items())
        out.revision1_torch_accuracy = files.model_accuracy
        demo.say(f"Revision 1: a 64-32-10 MLP trained in the cloud on only 20 labelled images (2 per class): "
                 f"{files.model_accuracy * 100:.2f}% on the held-out digits (torch)")

        traffic = TrafficThread(demo.ready_endpoints, files.heldout_x, files.heldout_y).start()
        demo.traffic = traffic
        demo.say("kubectl apply -f digits-edgemodel.yaml  (revision 1; canary, analysis on live traffic)")
        sources = _Files(files.calibration, files.validation)
        demo.console.print("    " + stack.apply(demo.manifest(files.model, sources, samples=180, pinned=True),
                                                "digits-edgemodel.yaml"))
        ready = f"{len(nodes)}/{len(nodes)}"
        demo.follow("conversion and canary rollout of revision 1",
                    lambda s: s.get("phase") == "Available" and s.get("revision") == 1 and s.get("ready") == ready)
        demo.say(f"Revision 1 is Available on {ready} nodes")
        self.measure(1, traffic.restart_stats())
        traffic.stop()  # quiet while the nodes train
        demo.traffic = None

        self.train(files.model, files.validation)
        # The canary of revision 2 is judged on live traffic.
        traffic = TrafficThread(demo.ready_endpoints, files.heldout_x, files.heldout_y).start()
        demo.traffic = traffic
        demo.say("The operator set the EdgeModel's spec.source to the trained model: revision 2 converts, passes "
                 "the accuracy gate and rolls out by canary")
        st = demo.follow("conversion and canary rollout of revision 2 (the federated model)", lambda s: (
            s.get("phase") == "Available" and s.get("revision") == 2 and s.get("ready") == ready)
            or s.get("phase") == "Failed"
            or any(r.get("revision") == 2 and r.get("outcome") in ("Failed", "RolledBack") for r in s.get("history", []))
            or any(c.get("type") == "Degraded" and c.get("status") == "True" for c in s.get("conditions", [])))
        if not (st.get("phase") == "Available" and st.get("revision") == 2):
            conditions = "; ".join(f"{c['type']}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"
                                   for c in st.get("conditions", []))
            raise ChapterFailed(f"revision 2 (the federated model) did not become Available: phase "
                                f"{st.get('phase')}, serving revision {st.get('revision')}; {conditions}")
        record: dict[str, Any] = next((r for r in st.get("history", []) if r.get("revision") == 2), {})
        out.origin = origin_text(record.get("origin"))
        demo.say(f"Revision 2 is Available on {ready} nodes; its origin (status.history): {out.origin}")
        if (record.get("origin") or {}).get("kind") != "FederatedTraining":
            raise ChapterFailed(f"revision 2's history record names no FederatedTraining origin: {record}")
        self.measure(2, traffic.restart_stats())
        demo.console.print(self.comparison_table())
        a1, a2 = out.accuracy.get(1), out.accuracy.get(2)
        if a1 is None or a2 is None or a2 <= a1:
            raise ChapterFailed(f"revision 2 did not serve better than revision 1 on the held-out digits "
                                f"({a1} vs {a2}); see {demo.opt.workdir / 'logs'}")
        return out

    def train(self, model: Path, validation: Path) -> None:
        """Apply the FederatedTraining and print each round until it succeeds; fail naming what did not happen."""
        demo, stack, out = self.demo, self.stack, self.outcome
        timeout = demo.opt.stage_timeout_s
        doc = training_manifest(model, validation, self.target, self.rounds, int(max(timeout, 60)))
        demo.say(f"kubectl apply -f digits-federatedtraining.yaml  (FedAvg over {len(stack.edge_nodes)} nodes, "
                 f"up to {self.rounds} rounds, stop at {self.target * 100:.0f}% validation accuracy)")
        demo.console.print("    " + stack.apply(doc, "digits-federatedtraining.yaml"))
        started = time.monotonic()
        deadline = started + timeout
        printed, phase = 0, ""
        while True:
            obj = stack.cluster.get(*FT, TRAINING, "default") or {}
            status = obj.get("status") or {}
            if status.get("phase", "") != phase:
                phase = status.get("phase", "")
                if phase:
                    demo.console.print(f"    phase {phase}, nodes {', '.join(status.get('nodes') or []) or '-'}")
            for record in (status.get("rounds") or [])[printed:]:
                demo.console.print("    " + round_line(record, status.get("nodes") or stack.edge_nodes))
                printed += 1
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                raise ChapterFailed(f"the FederatedTraining {TRAINING} did not finish within {timeout:.0f} s (phase "
                                    f"{phase or '-'}, {printed} round(s)); see {demo.opt.workdir / 'kube'} (Pod logs)")
            time.sleep(0.5)
        out.training_seconds = time.monotonic() - started
        if phase == "Failed":
            raise ChapterFailed(f"the FederatedTraining {TRAINING} failed: {failed_message(obj)}")
        trained = status.get("model") or {}
        out.rounds = int(trained.get("round", status.get("round", 0)))
        accuracy = float(trained.get("accuracy", 0.0))
        out.training = (f"{out.rounds} rounds in {out.training_seconds:.0f} s, validation accuracy {accuracy * 100:.2f}%"
                        + (" (target reached)" if accuracy >= self.target else f" (all {out.rounds} rounds)"))
        demo.say(f"FederatedTraining {TRAINING} Succeeded: {out.training}; trained model {trained.get('uri', '-')}")

    def measure(self, revision: int, stats: TrafficStats) -> None:
        """Held-out digits to every agent for ``eval_seconds``: the accuracy served by ``revision``."""
        self.demo.say(f"Sending the held-out digits to the {len(self.stack.edge_nodes)} nodes for "
                      f"{self.eval_seconds:.0f} s (revision {revision})")
        time.sleep(self.eval_seconds)
        served = {v: n for v, n in stats.versions.items() if n}
        if stats.ok == 0 or set(served) != {str(revision)}:
            raise ChapterFailed(f"no clean answers from revision {revision}: {stats.ok} answers by version {served}, "
                                f"{stats.errors} errors ({stats.last_error or 'no error'})")
        self.outcome.accuracy[revision] = stats.accuracy
        self.outcome.requests[revision] = stats.ok
        self.demo.say(f"Revision {revision} served {stats.ok} answers, {stats.errors} errors, accuracy "
                      f"{(stats.accuracy or 0.0) * 100:.2f}%")

    def data_table(self, shards: dict[str, Path], classes: dict[str, list[int]]) -> Table:
        import numpy as np

        table = Table()
        for col in ("node", "site", "classes", "images"):
            table.add_column(col)
        sites = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get("edgemodel.io/site", "")
                 for n in self.stack.cluster.list_objects("v1", "nodes")}
        for node, shard in shards.items():
            with np.load(shard) as npz:
                count = len(npz["labels"])
            table.add_row(node, sites.get(node, ""), ", ".join(map(str, classes[node])), str(count))
        return table

    def comparison_table(self) -> Table:
        out = self.outcome
        table = Table(title="The same held-out digits sent to the agents", title_justify="left")
        for col in ("revision", "trained by", "served accuracy", "answers"):
            table.add_column(col)
        for revision, by in ((1, "the cloud, on 20 labelled images"), (2, out.origin)):
            acc = out.accuracy.get(revision)
            table.add_row(str(revision), by, "-" if acc is None else f"{acc * 100:.2f}%",
                          str(out.requests.get(revision, 0)))
        return table


@dataclass(frozen=True)
class _Files:
    """The two data files :meth:`Demo.manifest` points an EdgeModel at."""

    calib_npz: Path
    val_npz: Path
