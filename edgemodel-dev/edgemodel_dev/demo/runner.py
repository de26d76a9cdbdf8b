"""The demo story: train, apply, convert, canary, serve, break, roll back, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from edgemodel_dev.demo import federated_chapter
from edgemodel_dev.demo.federated_chapter import ChapterFailed, FederatedChapter, FederatedOutcome
from edgemodel_dev.demo.shutdown import SignalGuard, reset_workdir
from edgemodel_dev.demo.split_chapter import (
    SPLIT_MODEL,
    SplitReading,
    read_split_metrics,
    split_manifest,
    split_table,
)
from edgemodel_dev.demo.stack import DemoStack
from edgemodel_dev.demo.traffic import TrafficStats, run_traffic
from edgemodel_dev.demo.views import candidates_table, model_panel, nodes_table, traffic_panel
from edgemodel_dev.polling import wait_until

log = logging.getLogger("edgemodel_dev.demo")
# examples/digits-edgemodel.yaml, shipped as package data (copied by helm/sync-chart-files.py).
EXAMPLES = Path(__file__).resolve().with_name("examples")
MODEL = "digits"
CHAPTERS = ("rollout", "federated")
"""``rollout`` (the default, what `make demo` runs): train, canary, rollback, split; ``federated``: federated
training on 5 edge nodes' non-IID data, rolled out as the next revision."""


@dataclass
class DemoOptions:
    workdir: Path
    keep: bool = False
    live: bool = True
    prometheus: bool = True
    traffic_seconds: float = 12.0
    epochs: int = 40
    latency_budget_ms: float = 10.0
    """p95 budget of both revisions: about 5x the fast one on a busy 2-core machine, under the slow one's 10-20 ms per image."""
    stage_timeout_s: float = 240.0
    split: bool = True
    split_traffic_seconds: float = 6.0
    chapter: str = "rollout"
    federated_target: float = 0.92


@dataclass
class DemoResult:
    ok: bool = False
    message: str = ""
    test_accuracy: float | None = None
    served_accuracy: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    requests: int = 0
    errors: int = 0
    chosen: list[str] = field(default_factory=list)
    rollback_message: str = ""
    history: list[tuple[int, str]] = field(default_factory=list)
    prometheus_p95_ms: float | None = None
    split_cut: str = ""
    split_answers: str = ""
    split_fallback: str = ""
    split_ok: bool = True
    federated: FederatedOutcome | None = None
    seconds: float = 0.0


class TrafficThread:
    """Background v2 traffic to every node serving ``model``, until stopped."""

    def __init__(self, endpoints: Callable[[], list[str]], x: np.ndarray, y: np.ndarray, model: str = MODEL,
                 concurrency: int = 3) -> None:
        self.stats = TrafficStats()
        self._endpoints = endpoints
        self._x, self._y = x, y
        self._model, self._concurrency = model, concurrency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> TrafficThread:
        self._thread.start()
        return self

    def restart_stats(self) -> TrafficStats:
        self.stats.__init__()  # type: ignore[misc]
        return self.stats

    def _run(self) -> None:
        asyncio.run(run_traffic(self._endpoints, self._model, "input", self._x, self._y, self.stats,
                                duration_s=1800, concurrency=self._concurrency, stop=self._stop))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.opt = options
        self.console = console
        if options.chapter not in CHAPTERS:
            raise ValueError(f"chapter: {options.chapter!r} is not one of {', '.join(CHAPTERS)}")
        federated = options.chapter == "federated"
        self.stack = DemoStack(
            options.workdir, with_prometheus=options.prometheus, with_cloud=options.split and not federated,
            nodes=federated_chapter.NODES if federated else None,
            operator_env=federated_chapter.OPERATOR_ENV if federated else None)
        self.traffic: TrafficThread | None = None
        self.result = DemoResult()

    # ---------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.console.print(f"[bold cyan]==>[/] {text}")

    def ready_endpoints(self, model: str = MODEL) -> list[str]:
        """v2 endpoints of agents that report ``model`` Ready (a whole model or a split head; never a cloud tail)."""
        out = []
        for agent in self.stack.agents():
            status = agent.get("status") or {}
            if any(m.get("name") == model and m.get("state") == "Ready" and m.get("role", "full") != "tail"
                   for m in status.get("models", [])):
                out.append(status.get("endpoint", ""))
        return [e for e in out if e]

    def view(self, model: str = MODEL) -> Group:
        em = self.stack.edgemodel(model)
        return Group(
            Panel(model_panel(em), title="edgemodel-dev demo", border_style="cyan"),
            candidates_table(em),
            nodes_table(self.stack.agents(), model, {
                n["metadata"]["name"]: n["metadata"].get("labels") or {}
                for n in self.stack.cluster.list_objects("v1", "nodes")}),
            traffic_panel(self.traffic.stats if self.traffic else None),
        )

    def follow(self, what: str, done: Callable[[dict[str, Any]], bool], model: str = MODEL) -> dict[str, Any]:
        """Show the live view of ``model`` until ``done(status)``; fail after the stage timeout."""
        deadline = time.monotonic() + self.opt.stage_timeout_s
        last_line = ""

        def status() -> dict[str, Any]:
            return (self.stack.edgemodel(model) or {}).get("status") or {}

        def check() -> dict[str, Any] | None:
            st = status()
            return st if done(st) else None

        if self.opt.live and self.console.is_terminal:
            with Live(self.view(), console=self.console, refresh_per_second=4, transient=False) as live:
                while (st := check()) is None:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                    live.update(self.view(model))
                live.update(self.view(model))
        else:
            while (st := check()) is None:
                if time.monotonic() > deadline:
                    break
                st_now = status()
                line = (f"phase={st_now.get('phase', '-')} revision={st_now.get('revision', '-')} "
                        f"target={st_now.get('targetRevision', '-')} step={(st_now.get('rollout') or {}).get('step', 0)} "
                        f"ready={st_now.get('ready', '0/0')}")
                if line != last_line:
                    self.console.print(f"    {line}")
                    last_line = line
                time.sleep(0.5)
        if st is None:
            raise TimeoutError(f"{what} did not happen within {self.opt.stage_timeout_s:.0f} s; "
                               f"see the logs in {self.opt.workdir / 'logs'} and {self.opt.workdir / 'kube'}")
        return st

    # ---------------------------------------------------------------------------------------
    def manifest(self, source: Path, example: Any, samples: int = 360, pinned: bool = False) -> dict[str, Any]:
        doc = yaml.safe_load((EXAMPLES / "digits-edgemodel.yaml").read_text())
        spec = doc["spec"]
        spec["source"]["uri"] = source.resolve().as_uri()
        spec["optimization"]["int8"]["calibrationDataUri"] = example.calib_npz.resolve().as_uri()
        spec["optimization"]["int8"]["calibrationSamples"] = 32
        spec["validation"]["dataUri"] = example.val_npz.resolve().as_uri()
        spec["validation"]["samples"] = samples
        if pinned:  # explicit FP32 + dynamic INT8: a short conversion for the demo's second revision
            spec["optimization"]["mode"] = "explicit"
            spec["optimization"]["int8"]["method"] = "dynamic"
        spec["rollout"]["analysis"].update({"windowSeconds": 8, "minRequests": 20,
                                            "maxP95LatencyMs": self.opt.latency_budget_ms})
        return dict(doc)

    def run(self) -> DemoResult:
        """The chosen chapter on a fresh stack."""
        started = time.monotonic()
        self.start_stack()
        if self.opt.chapter == "federated":
            self.run_federated()
        else:
            self.run_rollout()
        self.result.seconds = time.monotonic() - started
        return self.result

    def start_stack(self) -> None:
        with self.console.status("Starting the emulated control plane, kubelet and artifact store"):
            self.stack.start_control_plane()
            self.stack.start_store()
        self.say(f"Control plane on {self.stack.cluster.url} (kubeconfig {self.stack.cluster.kubeconfig}); "
                 f"artifact store on {self.stack.store_url}")
        with self.console.status(f"Starting {len(self.stack.node_specs)} edge agents on simulated k3s edge nodes"
                                 + (" and a cloud agent" if self.stack.with_cloud else "")):
            self.stack.start_agents()
        cloud = f" and cloud node {', '.join(self.stack.cloud_nodes)}" if self.stack.cloud_nodes else ""
        self.say(f"Edge nodes {', '.join(self.stack.edge_nodes)}{cloud} registered their EdgeAgents")
        with self.console.status("Starting Prometheus and the operator"):
            self.stack.start_prometheus()
            self.stack.start_operator()
        self.say(f"Prometheus on {self.stack.prometheus.url}" if self.stack.prometheus else self.stack.prometheus_note)
        self.say("Operator running (kopf)")

    def run_federated(self) -> None:
        """The federated chapter; a step that did not happen ends it with ``ok`` False and a message naming it."""
        chapter = FederatedChapter(self, target=self.opt.federated_target, eval_seconds=min(self.opt.traffic_seconds, 5.0))
        self.result.federated = chapter.outcome
        try:
            chapter.run()
        except (ChapterFailed, TimeoutError) as exc:
            self.result.message = f"federated chapter: {exc}"
            return
        self.result.ok = True
        self.result.message = "the federated chapter ran: trained on the nodes, rolled out as revision 2"

    def run_rollout(self) -> None:
        """Train, canary, rollback, then the split chapter."""
        from edgemodel_dev.demo.models import write_slow_revision
        from edgemodel_dev.examples_models import load_digits_data, write_digits_example

        with self.console.status(f"Training a CNN on scikit-learn's digits ({self.opt.epochs} epochs)"):
            example = write_digits_example(self.opt.workdir / "models" / MODEL, epochs=self.opt.epochs)
        self.result.test_accuracy = example.test_accuracy
        self.say(f"Trained: test accuracy {example.test_accuracy * 100:.2f}% -> {example.model_pt}")

        data = load_digits_data()
        self.traffic = TrafficThread(self.ready_endpoints, data.x_test, data.y_test).start()

        self.say("kubectl apply -f digits-edgemodel.yaml  (revision 1)")
        self.console.print("    " + self.stack.apply(self.manifest(example.model_pt, example), "digits-edgemodel.yaml"))
        st = self.follow("conversion and canary rollout of revision 1", lambda s: s.get("phase") == "Available"
                         and s.get("revision") == 1 and s.get("ready") == "3/3")
        self.result.chosen = [f"{c['name']} ({c['hardwareClass']})" for c in st.get("candidates", []) if c.get("chosen")]
        self.console.print(candidates_table(self.stack.edgemodel(MODEL)))
        self.say(f"Revision 1 is Available on {st['ready']} nodes; chosen: {', '.join(self.result.chosen)}")

        self.say(f"Sending held-out digits to every node for {self.opt.traffic_seconds:.0f} s")
        stats = self.traffic.restart_stats()
        end = time.monotonic() + self.opt.traffic_seconds
        if self.opt.live and self.console.is_terminal:
            with Live(traffic_panel(stats), console=self.console, refresh_per_second=4) as live:
                while time.monotonic() < end:
                    time.sleep(0.25)
                    live.update(traffic_panel(stats))
        else:
            time.sleep(self.opt.traffic_seconds)
            self.console.print(traffic_panel(stats))
        self.result.served_accuracy = stats.accuracy
        self.result.p50_ms, self.result.p95_ms = stats.percentile(50), stats.percentile(95)
        self.result.requests, self.result.errors = stats.ok, stats.errors

        with self.console.status("Building a deliberately slow revision (same predictions, heavy extra branch)"):
            slow = write_slow_revision(example.model_pt, self.opt.workdir / "models" / MODEL / "model-slow.pt")
        self.say(f"kubectl apply (revision 2: {slow.name}, over the {self.opt.latency_budget_ms:.0f} ms p95 budget)")
        self.console.print("    " + self.stack.apply(self.manifest(slow, example, samples=64, pinned=True), "digits-edgemodel-r2.yaml"))
        st = self.follow("the automatic rollback of revision 2", lambda s: any(
            c["type"] == "Degraded" and c["status"] == "True" and c["reason"] == "RolledBack"
            for c in s.get("conditions", [])))
        degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
        self.result.rollback_message = degraded["message"]
        self.say(f"[bold red]Rolled back[/]: {degraded['message']}")
        with contextlib.suppress(TimeoutError):  # the summary says what it found either way
            wait_until("every node serving revision 1 again", lambda: len(self.ready_endpoints()) >= 3, 60,
                       interval=0.5)
        final = (self.stack.edgemodel(MODEL) or {}).get("status") or {}
        self.result.history = [(r["revision"], r["outcome"]) for r in final.get("history", [])]
        if self.stack.prometheus is not None:
            q = ('histogram_quantile(0.95, sum by (le) (rate(edgemodel_request_duration_seconds_bucket'
                 f'{{model="{MODEL}",version="1"}}[2m])))')
            try:
                res = self.stack.prometheus.query(q)
                value = float(res[0]["value"][1]) if res else float("nan")
                self.result.prometheus_p95_ms = None if np.isnan(value) else value * 1000.0
            except Exception as exc:  # the summary still stands without it
                log.warning("Prometheus query failed: %s", exc)
        self.result.ok = final.get("revision") == 1 and (1, "Available") in self.result.history
        self.result.message = "the whole loop ran" if self.result.ok else f"unexpected final state: {final}"
        if self.opt.split and self.result.ok:
            self.run_split(example, data.x_test, data.y_test)
            self.result.ok = self.result.split_ok
            if not self.result.ok:
                self.result.message = f"split inference: {self.result.split_answers}; {self.result.split_fallback}"

    def run_split(self, example: Any, x: np.ndarray, y: np.ndarray) -> None:
        """The same CNN cut in two: heads on the edge nodes, the tail on the cloud node; then a cloud outage."""
        cloud = self.stack.cloud_nodes[0]
        self.say(f"kubectl apply -f digits-split-edgemodel.yaml  (the CNN cut in two: head on the edge nodes, "
                 f"tail on {cloud}, features over mTLS)")
        doc = split_manifest(example.model_pt, example.val_npz)
        self.console.print("    " + self.stack.apply(doc, "digits-split-edgemodel.yaml"))
        # Clients call the heads as soon as they are Ready: the rollout's analysis judges that traffic.
        clients = TrafficThread(lambda: self.ready_endpoints(SPLIT_MODEL), x, y, SPLIT_MODEL, concurrency=1).start()
        try:
            st = self.follow("the split rollout", lambda s: s.get("phase") == "Available" and s.get("ready") == "3/3",
                             model=SPLIT_MODEL)
        finally:
            clients.stop()
        split = st["artifacts"][0]["split"]
        link = doc["spec"]["split"]["link"]
        self.result.split_cut = f"{split['cut']} ({split.get('chosenBy') or 'manual'}, wire {split['wire']})"
        predicted = split.get("predictedMs")
        self.say(f"Cut at [bold]{split['cut']}[/] (chosen by {split.get('chosenBy') or 'the spec'} for a "
                 f"{link['bandwidthMbitS']} Mbit/s, {link['rttMs']} ms link"
                 + (f": {predicted:.1f} ms predicted per request" if predicted is not None else "")
                 + f"); the tail is Ready on {cloud}, the heads on {', '.join(self.stack.edge_nodes)}")

        heads = self.ready_endpoints(SPLIT_MODEL)
        stats, reading = self.measure_split(heads, x, y, self.opt.split_traffic_seconds,
                                            "Split inference (client numbers; per-stage means from the edge agents' "
                                            "/metrics)")
        per_request = reading.bytes_up_per_request
        self.result.split_answers = (
            f"{stats.ok} answers, {stats.errors} errors, accuracy "
            + ("-" if stats.accuracy is None else f"{stats.accuracy * 100:.2f}%")
            + f", {reading.requests.get('split', 0):.0f} through the cloud tail"
            + ("" if per_request is None else f", {per_request:.0f} B of features each"))
        self.say(f"Split inference: {self.result.split_answers}")
        check = self.cut_check()
        self.say(f"Cut check by the operator (SplitCutCurrent): {check}")

        self.say(f"Stopping the cloud agent on {cloud}: the edge nodes answer with the whole model (fallback: local)")
        self.stack.cluster.node_processes[cloud].stop()
        outage, during = self.measure_split(heads, x, y, 3.0, f"While {cloud} is down")
        local = during.requests.get("local", 0.0)
        self.result.split_fallback = f"{outage.ok} answers, {outage.errors} errors, {local:.0f} by the local whole model"
        self.say(f"While {cloud} was down: {self.result.split_fallback}")
        self.stack.cluster.node_processes[cloud].start()
        self.result.split_ok = (stats.ok > 0 and stats.errors == 0 and reading.requests.get("split", 0) > 0
                                and (stats.accuracy or 0) > 0.9 and outage.ok > 0 and outage.errors == 0 and local > 0)

    def measure_split(self, heads: list[str], x: np.ndarray, y: np.ndarray, seconds: float,
                      title: str) -> tuple[TrafficStats, SplitReading]:
        """Send ``seconds`` of traffic to the heads; show and return the client's numbers and the agents' split
        metrics of just that traffic."""
        before = read_split_metrics(heads, SPLIT_MODEL)
        stats = asyncio.run(run_traffic(lambda: heads, SPLIT_MODEL, "input", x, y, TrafficStats(),
                                        duration_s=seconds, concurrency=2))
        reading = read_split_metrics(heads, SPLIT_MODEL).since(before)
        self.console.print(split_table(stats, reading, title))
        return stats, reading

    def cut_check(self, timeout_s: float = 20.0) -> str:
        """The operator's verdict on the serving cut once the heads reported what they measure."""
        def condition() -> dict[str, Any] | None:
            status = (self.stack.edgemodel(SPLIT_MODEL) or {}).get("status") or {}
            return next((c for c in status.get("conditions", []) if c["type"] == "SplitCutCurrent"), None)

        def measured() -> dict[str, Any] | None:
            current = condition()
            return current if current is not None and current["reason"] != "NotMeasured" else None

        found: dict[str, Any] | None
        try:
            found = wait_until("the operator's cut check", measured, timeout_s, interval=0.5)
        except TimeoutError:
            found = condition()
        return f"{found['reason']}: {found['message']}" if found else "not reported yet"

    def summary(self) -> Table:
        r = self.result
        table = Table(title="edgemodel-dev demo summary", title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v * 100:.2f}%"

        if r.federated is not None:
            fed = r.federated
            table.add_row("node data (classes)", fed.data or "-")
            table.add_row("revision 1 (cloud, 20 images) torch accuracy", pct(fed.revision1_torch_accuracy))
            table.add_row("federated training", fed.training or "-")
            table.add_row("revision 2 origin", fed.origin or "-")
            for revision in (1, 2):
                table.add_row(f"revision {revision} served accuracy (held-out)",
                              f"{pct(fed.accuracy.get(revision))} ({fed.requests.get(revision, 0)} answers)")
            self.footer(table)
            return table
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} ms"

        table.add_row("trained model (torch) test accuracy", pct(r.test_accuracy))
        table.add_row("chosen artifacts", ", ".join(r.chosen) or "-")
        table.add_row("served accuracy on held-out digits", pct(r.served_accuracy))
        table.add_row("client p50 / p95", f"{ms(r.p50_ms)} / {ms(r.p95_ms)} ({r.requests} requests, {r.errors} errors)")
        table.add_row("Prometheus p95 (revision 1)", ms(r.prometheus_p95_ms))
        table.add_row("rollback", r.rollback_message or "-")
        table.add_row("revision history", ", ".join(f"r{n} {o}" for n, o in r.history) or "-")
        if self.opt.split:
            table.add_row("split inference cut", r.split_cut or "-")
            table.add_row("split inference answers", r.split_answers or "-")
            table.add_row("cloud outage (split)", r.split_fallback or "-")
        self.footer(table)
        return table

    def footer(self, table: Table) -> None:
        """Wall time and where to look, the same for every chapter."""
        table.add_row("wall time", f"{self.result.seconds:.0f} s")
        table.add_row("kubeconfig", str(self.stack.cluster.kubeconfig))
        kinds = "em,ea,fedt" if self.opt.chapter == "federated" else "em,ea"
        table.add_row("try (with --keep)", f"KUBECONFIG={self.stack.cluster.kubeconfig} kubectl get {kinds}")
        if self.stack.prometheus is not None:
            table.add_row("Prometheus UI", self.stack.prometheus.url)
        table.add_row("logs", str(self.opt.workdir / "logs"))

    def close(self) -> None:
        """Stop the traffic and every process; safe to call again."""
        try:
            if self.traffic is not None:
                self.traffic.stop()
        finally:
            self.stack.close()


def run_demo(options: DemoOptions, console: Console | None = None, guard: SignalGuard | None = None) -> DemoResult:
    """Run the demo end to end; stop everything it started unless ``keep`` (then until Ctrl-C).

    ``guard`` (installed by the CLI) keeps a second SIGTERM or Ctrl-C from cutting the shutdown short.
    """
    console = console or Console()
    reset_workdir(options.workdir)
    demo = Demo(options, console)
    try:
        result = demo.run()
        console.print(demo.summary())
        if options.keep:
            console.print("[bold]--keep[/]: everything stays up; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("stopping")
        return result
    finally:
        if guard is not None:
            guard.stopping()
        console.print("Stopping every process the demo started")
        demo.close()
        if guard is not None:
            guard.finish()
