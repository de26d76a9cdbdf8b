"""Serve one stage of a pipeline and forward its features to the next stage (aiohttp, numpy, codec: agent-safe).

A pipeline of N stages is N tail servers (:func:`edgemodel.split.remote.make_tail_app`, the same
protocol, codec limits, in-flight bound and mTLS as a split tail): stage N is an ordinary tail; every
other stage is a :class:`ForwardingStage`, which runs its part on the features it receives, sends
its output to the next stage with :class:`~edgemodel.split.remote.RemoteTail` and answers with what
comes back (the model's outputs return along the chain, so the entry answers the client). Stage 1
runs on the entry node and holds the whole model: when any downstream stage is unreachable (or
answers 503 because *its* downstream is), the entry answers with the whole model
(:func:`~edgemodel.split.remote.run_split` with ``FallbackPolicy.LOCAL``) and, during the client's
cool-down, skips the chain at once. A middle stage has no fallback: it answers 503 so its upstream
falls back.

Requests are pipelined: every stage's server handles requests concurrently, computes in its own
executor and awaits the downstream without holding it, so stage k works on request i+1 while
stage k+1 works on request i.

``python -m edgemodel.split.stages`` runs one stage as a process (tests, the benchmark): it prints
``READY <port>`` and serves ``/metrics`` beside the stage protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from edgemodel.split import codec
from edgemodel.split.metrics import STAGE_BUCKETS
from edgemodel.split.remote import (
    FallbackPolicy,
    PartRunner,
    RemoteTail,
    SplitOutcome,
    TailRegistry,
    TlsFiles,
    make_tail_app,
    run_split,
    start_tail_server,
)

log = logging.getLogger(__name__)


class PipelineMetrics:
    """Per-stage metrics of a pipeline stage server.

    - ``edgemodel_pipeline_stage_duration_seconds{model,version,stage,phase}``: ``compute`` (this stage's
      part), ``encode`` (features for the next stage), ``downstream`` (the rest of the chain as seen from
      here, round trip), ``local`` (the whole model after a fallback, entry only)
    - ``edgemodel_pipeline_requests_total{model,version,stage,path}``: ``chain``, ``local`` (fell back),
      ``unavailable`` (503 to the upstream)
    - ``edgemodel_pipeline_bytes_total{model,version,stage}``: feature bytes sent to the next stage
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model", "version", "stage"]
        self.seconds = Histogram(
            "edgemodel_pipeline_stage_duration_seconds",
            "Time of one phase of a pipeline stage.",
            [*labels, "phase"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "edgemodel_pipeline_requests_total",
            "Requests a pipeline stage handled, by path.",
            [*labels, "path"],
            registry=registry,
        )
        self.bytes = Counter(
            "edgemodel_pipeline_bytes_total",
            "Feature bytes a stage sent to the next stage.",
            labels,
            registry=registry,
        )

    def observe(self, model: str, version: str, stage: int | str, outcome: SplitOutcome) -> None:
        key = (model, version, str(stage))
        path = "chain" if outcome.path == "split" else outcome.path
        self.requests.labels(*key, path).inc()
        phases = {"compute": outcome.head_s, "encode": outcome.encode_s}
        if outcome.path == "split":
            phases["downstream"] = outcome.transfer_s + outcome.tail_s
            self.bytes.labels(*key).inc(outcome.bytes_up)
        else:
            phases["local"] = outcome.local_s
        for phase, seconds in phases.items():
            if phase in ("compute", "encode") and seconds == 0.0 and outcome.path != "split":
                continue  # skipped during a cool-down
            self.seconds.labels(*key, phase).observe(seconds)

    def unavailable(self, model: str, version: str, stage: int | str) -> None:
        self.requests.labels(model, version, str(stage), "unavailable").inc()


class ForwardingStage:
    """Stage ``index`` (1-based) of a chain that is not the last: run ``part``, forward to ``next_stage``.

    ``fallback`` (the whole model, entry only) answers when the rest of the chain cannot; without it
    a downstream failure raises ``SplitUnavailable`` (HTTP 503 to the upstream). Counts requests by path.
    """

    def __init__(
        self,
        part: PartRunner,
        next_stage: RemoteTail,
        *,
        model: str,
        version: str,
        index: int | str,
        fallback: PartRunner | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.part, self.next_stage, self.fallback = part, next_stage, fallback
        self.model, self.version, self.index, self.metrics = model, version, index, metrics
        self.counts = {"chain": 0, "local": 0, "unavailable": 0}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """This stage's part alone (what the chain computes here, without forwarding)."""
        return self.part(feeds)

    async def handle(
        self, features: Mapping[str, np.ndarray], executor: Executor | None
    ) -> tuple[dict[str, np.ndarray], float]:
        """The chain's answer from here on and this stage's own compute seconds; ``SplitUnavailable`` without fallback."""
        policy = FallbackPolicy.LOCAL if self.fallback is not None else FallbackPolicy.FAIL
        try:
            outcome = await run_split(self.part, self.next_stage, self.fallback, policy, features, executor)
        except Exception:
            self.counts["unavailable"] += 1
            if self.metrics is not None:
                self.metrics.unavailable(self.model, self.version, self.index)
            raise
        path = "chain" if outcome.path == "split" else outcome.path
        self.counts[path] += 1
        if self.metrics is not None:
            self.metrics.observe(self.model, self.version, self.index, outcome)
        return outcome.outputs, outcome.head_s + outcome.local_s

    async def close(self) -> None:
        await self.next_stage.close()


class TimedPart:
    """The last stage: its part, with the compute time recorded in the stage metrics."""

    def __init__(
        self,
        part: PartRunner,
        *,
        model: str,
        version: str,
        index: int,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.part, self.model, self.version, self.index, self.metrics = part, model, version, index, metrics

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        start = time.perf_counter()
        out = self.part(feeds)
        if self.metrics is not None:
            key = (self.model, self.version, str(self.index))
            self.metrics.seconds.labels(*key, "compute").observe(time.perf_counter() - start)
            self.metrics.requests.labels(*key, "chain").inc()
        return out


async def _serve(args: argparse.Namespace) -> None:
    from edgemodel.split.runtime import OrtPart  # onnxruntime: only the process that runs a stage needs it

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    client_tls = (
        TlsFiles(args.tls_ca, args.tls_client_cert or args.tls_cert, args.tls_client_key or args.tls_key)
        if args.tls_ca
        else None
    )
    part = OrtPart(args.stage, threads=args.threads)
    runner: PartRunner
    stage: ForwardingStage | None = None
    if args.next_url:
        nxt = RemoteTail(
            args.next_url,
            args.model,
            args.version,
            args.next_cut,
            wire=codec.WireFormat.parse(args.wire),
            tls=client_tls,
            timeout_s=args.timeout_s,
            connect_timeout_s=min(2.0, args.timeout_s),
            cooldown_s=args.cooldown_s,
        )
        full = OrtPart(args.full, threads=args.threads) if args.full else None
        stage = ForwardingStage(
            part.run,
            nxt,
            model=args.model,
            version=args.version,
            index=args.index,
            fallback=full.run if full else None,
            metrics=metrics,
        )
        runner = stage
    else:
        runner = TimedPart(
            part.run, model=args.model, version=args.version, index=args.index, metrics=metrics
        )
    tails = TailRegistry()
    tails.add(args.model, args.version, runner, args.cut_in)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage{args.index}")
    app = make_tail_app(tails, max_inflight=args.max_inflight, executor=executor)

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app.router.add_get("/metrics", prometheus)
    context = tls.server_context(require_client_cert=True) if tls else None
    server = await start_tail_server(app, args.host, args.port, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "Serving stage %d of %s:%s (input %s) on %s%s",
        args.index,
        args.model,
        args.version,
        args.cut_in,
        server.url,
        f", next stage {args.next_url}" if args.next_url else " (last stage)",
    )
    print(f"READY {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        if stage is not None:
            await stage.close()
        await server.close()
        executor.shutdown(wait=False)


@dataclass
class StageProcess:
    """One stage served by ``python -m edgemodel.split.stages`` in its own process."""

    index: int
    process: subprocess.Popen[str]
    port: int
    url: str

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def _read_ready(process: subprocess.Popen[str], timeout_s: float) -> int:
    """The port from the child's ``READY <port>`` line (bounded wait; the child's log on failure)."""
    assert process.stdout is not None
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(process.stdout.readline() if process.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout_s)
    line = result[0] if result else ""
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(
            f"stage process {process.args!r} did not start within {timeout_s:g} s (exit "
            f"{process.poll()}, printed {line!r}); see its log"
        )
    return int(line.split()[1])


def start_chain(
    stages: Sequence[Path],
    cuts: Sequence[str],
    input_name: str,
    *,
    full: Path | None = None,
    wire: str = "int8",
    model: str = "model",
    version: str = "1",
    tls: dict[str, Path] | None = None,
    threads: int = 1,
    log_dir: Path | None = None,
    cooldown_s: float = 2.0,
    placement: Callable[[int, int], None] | None = None,
    via: Callable[[int, StageProcess], str] | None = None,
    ready_timeout_s: float = 120.0,
) -> list[StageProcess]:
    """Start one process per stage, the last first (each needs the next one's URL); returns them entry first.

    ``tls`` holds ``ca``, ``server_cert``, ``server_key``, ``client_cert``, ``client_key`` (mTLS on
    every hop); ``placement(stage_index, pid)`` runs right after a process starts (e.g. moves it
    into a CPU-quota cgroup); ``via(stage_index, next_stage)`` returns the URL stage ``stage_index``
    reaches the next stage at (e.g. through a link-shaping proxy; default its own URL).
    """
    if len(cuts) != len(stages) - 1:
        raise ValueError(f"cuts: {len(stages)} stages need {len(stages) - 1} cuts, got {len(cuts)}")
    started: list[StageProcess] = []
    next_url, next_cut = "", ""
    try:
        for index in range(len(stages), 0, -1):
            cut_in = input_name if index == 1 else cuts[index - 2]
            cmd = [
                sys.executable,
                "-m",
                "edgemodel.split.stages",
                "--stage",
                str(stages[index - 1]),
                "--index",
                str(index),
                "--cut-in",
                cut_in,
                "--model",
                model,
                "--version",
                version,
                "--wire",
                wire,
                "--threads",
                str(threads),
                "--cooldown-s",
                str(cooldown_s),
            ]
            if next_url:
                url = via(index, started[-1]) if via is not None else next_url
                cmd += ["--next-url", url, "--next-cut", next_cut]
            if index == 1 and full is not None:
                cmd += ["--full", str(full)]
            if tls:
                cmd += [
                    "--tls-ca",
                    str(tls["ca"]),
                    "--tls-cert",
                    str(tls["server_cert"]),
                    "--tls-key",
                    str(tls["server_key"]),
                    "--tls-client-cert",
                    str(tls["client_cert"]),
                    "--tls-client-key",
                    str(tls["client_key"]),
                ]
            log_file = open(log_dir / f"stage-{index}.log", "w") if log_dir else subprocess.DEVNULL  # noqa: SIM115
            process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True)
            if placement is not None:
                placement(index, process.pid)
            port = _read_ready(process, ready_timeout_s)
            scheme = "https" if tls else "http"
            stage = StageProcess(index, process, port, f"{scheme}://127.0.0.1:{port}")
            started.append(stage)
            next_url, next_cut = stage.url, cut_in
    except BaseException:
        for stage in started:
            stage.stop()
        raise
    return started[::-1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edgemodel.split.stages", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", type=Path, required=True, help="stage-k.onnx")
    parser.add_argument("--index", type=int, required=True, help="1-based stage index (metrics label)")
    parser.add_argument(
        "--cut-in", required=True, help="the input tensor of this stage (the model input for stage 1)"
    )
    parser.add_argument("--model", default="model")
    parser.add_argument("--version", default="1")
    parser.add_argument(
        "--next-url", default="", help="base URL of the next stage (empty: this is the last stage)"
    )
    parser.add_argument("--next-cut", default="", help="the next stage's input tensor")
    parser.add_argument("--full", type=Path, help="the whole model, for the entry's local fallback")
    parser.add_argument("--wire", default="int8", help="fp32 | fp16 | int8, optionally +zstd")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--cooldown-s", type=float, default=2.0)
    parser.add_argument("--max-inflight", type=int, default=32)
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument(
        "--tls-client-cert", type=Path, help="client identity towards the next stage (default --tls-cert)"
    )
    parser.add_argument("--tls-client-key", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.next_url and not args.next_cut:
        print("--next-cut: needed with --next-url (the next stage's input tensor)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s stage{args.index} %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
