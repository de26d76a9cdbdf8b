"""Rollout at scale: the real operator against the API emulator with many simulated edge agents.

    .venv/bin/python bench/operator/rollout_scale.py --nodes 10 100 1000 --out bench/results/operator.md

Per fleet size, fresh processes: the emulator (`edgemodel-dev up`, its kubelet runs the real
conversion Job), the artifact store, and the operator (`edgemodel operator`), whose API traffic
goes through a counting proxy in this process. The agents are simulated here: N EdgeAgents with
capabilities, each renewing its heartbeat Lease every 10 s (one PUT, as a real agent does), one
watch on all EdgeAgents, and for each new assignment one status write reporting the revision Ready
after a short load delay (a real agent writes 1-3 times). EdgeAgent status is written only then.

Steady state first (``--steady-seconds``, nothing to roll out, every node renewing): the
operator's and the emulator's CPU share, and the lag from a renewal (its renewTime) to the
operator seeing it (``edgemodel_operator_lease_lag_seconds``), in the first and the second half of
the window: a lag that grows means the emulator cannot keep up. Then the rollout, measured from the
revision being ready (Converted=True) to every node reporting it Ready and the EdgeModel Available:
wall time, the operator's API requests per node (writes and all), the operator's CPU time, and
its peak RSS (VmHWM) over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import queue
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from edgemodel_dev.demo.processes import Process
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import wait_until_async

ROOT = Path(__file__).resolve().parents[2]
EDGEMODEL = str(ROOT / ".venv" / "bin" / "edgemodel")
EA_PATH = "/apis/edgemodel.io/v1alpha1/edgeagents"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
EM_PATH = "/apis/edgemodel.io/v1alpha1/namespaces/default/edgemodels"
HEARTBEAT_SECONDS = 10.0
LOAD_DELAY_SECONDS = 0.2
TIMEOUT_SECONDS = 600.0
RENEWERS = 2
"""Processes that renew the simulated nodes' Leases."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the API server as seen by the operator: a counting proxy --------------------------------------

@dataclass
class Upstream:
    server: str
    ssl: ssl.SSLContext | bool
    token: str

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Upstream:
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        ctx: ssl.SSLContext | bool = False
        if cluster["server"].startswith("https"):
            ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        return cls(cluster["server"], ctx, config["users"][0]["user"].get("token", ""))


def resource_of(path: str) -> str:
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not parts:
        return "discovery"
    return f"{parts[0]}/{parts[2]}" if len(parts) >= 3 else parts[0]


@dataclass
class CountingProxy:
    upstream: Upstream
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    session: aiohttp.ClientSession | None = None
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        verb = request.method.lower()
        if verb == "get" and request.query.get("watch") in ("true", "1"):
            verb = "watch"
        self.counts[(verb, resource_of(request.path))] += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding", "connection", "authorization")}
        headers["Authorization"] = f"Bearer {self.upstream.token}"
        body = await request.read()
        async with self.session.request(request.method, self.upstream.server + request.path_qs, data=body or None,
                                        headers=headers, ssl=self.upstream.ssl, auto_decompress=True) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")})
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientPayloadError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response

    def write_kubeconfig(self, path: Path) -> Path:
        config = {"apiVersion": "v1", "kind": "Config",
                  "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                  "users": [{"name": "operator", "user": {}}],
                  "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "operator"}}],
                  "current-context": "proxy"}
        path.write_text(yaml.safe_dump(config))
        return path

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


# --- the simulated fleet -----------------------------------------------------------------------

def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SimFleet:
    """N lightweight EdgeAgents: heartbeats, and a Ready report for every new assignment."""

    upstream: Upstream
    size: int
    session: aiohttp.ClientSession = field(init=False)
    ready: dict[str, int] = field(default_factory=dict)
    """agent -> revision it reported Ready."""
    writes: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    renewed: int = 0
    renew_failures: int = 0
    renew_seconds: list[float] = field(default_factory=list)
    behind: float = 0.0
    """How far the renewal schedule is behind (s): grows when the emulator cannot take 1 renewal/node/10 s."""

    def names(self) -> list[str]:
        return [f"sim-{i:05d}" for i in range(self.size)]

    async def request(self, method: str, path: str, body: Any, content_type: str = "application/json") -> Any:
        async with self.limit, self.session.request(
            method, self.upstream.server + path, data=json.dumps(body), ssl=self.upstream.ssl,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {self.upstream.token}"},
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:300]}")
            self.writes += 1
            return json.loads(text)

    def status(self, name: str, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"heartbeatTime": now(), "endpoint": f"http://127.0.0.1:1/{name}",
                                  "capabilities": {"arch": "amd64", "hardwareClass": "cpu", "cpuCount": 2,
                                                   "memoryBytes": 4 << 30, "providers": ["CPUExecutionProvider"]}}
        if models is not None:
            status["models"] = models
        return status

    async def create(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                             connector=aiohttp.TCPConnector(limit=64))

        async def one(name: str) -> None:
            # the operator selects on the Node's labels (an admin's), never the EdgeAgent's own
            await self.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                         "metadata": {"name": name, "labels": {"bench": "true"}}})
            await self.request("POST", EA_PATH, {"apiVersion": "edgemodel.io/v1alpha1", "kind": "EdgeAgent",
                                                 "metadata": {"name": name, "labels": {"bench": "true"}},
                                                 "spec": {"nodeName": name}})
            await self.request("PATCH", f"{EA_PATH}/{name}/status", {"status": self.status(name, [])},
                               "application/merge-patch+json")
            self.leases[name] = await self.request("POST", LEASE_PATH, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "labels": {"edgemodel.io/heartbeat": "true"}},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}})

        await asyncio.gather(*(one(n) for n in self.names()))
        self.tasks = [asyncio.create_task(self.renewals()), asyncio.create_task(self.watch())]

    async def renewals(self) -> None:
        """Every node renews its Lease once per HEARTBEAT_SECONDS from RENEWERS processes of their own (one
        Python process could not send 1,000 PUTs a second beside the proxy and the fleet on a loaded machine)."""
        ctx = multiprocessing.get_context("spawn")
        reports: Any = ctx.Queue()
        stop = ctx.Event()
        names = self.names()
        procs = [ctx.Process(target=renew_worker, daemon=True, args=(
            self.upstream.server, self.upstream.token, {n: self.leases[n] for n in names[i::RENEWERS]}, reports, stop))
            for i in range(RENEWERS)]
        for proc in procs:
            proc.start()
        behind: dict[int, float] = {}
        try:
            while not self.stop.is_set():
                try:
                    index, renewed, failures, late, latencies = await asyncio.to_thread(reports.get, True, 0.5)
                except queue.Empty:
                    continue
                self.renewed += renewed
                self.renew_failures += failures
                self.renew_seconds.extend(latencies)
                behind[index] = late
                self.behind = max(behind.values())
        finally:
            stop.set()
            for proc in procs:
                await asyncio.to_thread(proc.join, 5)
                if proc.is_alive():
                    proc.kill()

    async def watch(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.get(self.upstream.server + EA_PATH, params={"watch": "true"},
                                            ssl=self.upstream.ssl, timeout=aiohttp.ClientTimeout(total=None),
                                            headers={"Authorization": f"Bearer {self.upstream.token}"}) as resp:
                    async for line in resp.content:
                        if line.strip():
                            self.on_event(json.loads(line))

    def on_event(self, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        models = (obj.get("spec") or {}).get("models") or []
        for model in models:
            if self.ready.get(name) != model["revision"]:
                self.ready[name] = model["revision"]
                asyncio.get_running_loop().create_task(self.load(name, model))

    async def load(self, name: str, model: dict[str, Any]) -> None:
        await asyncio.sleep(LOAD_DELAY_SECONDS)
        state = {"name": model["name"], "namespace": model["namespace"], "revision": model["revision"],
                 "servingRevision": model["revision"], "state": "Ready", "provider": "CPUExecutionProvider",
                 "requestCount": 0, "errorCount": 0, "p50Ms": 0.5, "p95Ms": 1.0, "lastTransitionTime": now()}
        with contextlib.suppress(Exception):
            await self.request("PATCH", f"{EA_PATH}/{name}/status", {"status": self.status(name, [state])},
                               "application/merge-patch+json")

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


def renew_worker(server: str, token: str, leases: dict[str, dict[str, Any]], reports: Any, stop: Any) -> None:
    """A renewal process: PUT each of ``leases`` once per HEARTBEAT_SECONDS (10 slots a second, as agents
    spread out); every second it reports (renewed, failed, seconds behind schedule, PUT latencies)."""
    asyncio.run(_renew(server, token, leases, reports, stop))


async def _renew(server: str, token: str, leases: dict[str, dict[str, Any]], reports: Any, stop: Any) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    names = sorted(leases)
    slots = int(HEARTBEAT_SECONDS * 10)
    counts = {"renewed": 0, "failed": 0}
    latencies: list[float] = []
    limit = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(limit=64)) as session:

        async def renew(name: str) -> None:
            lease = leases[name]
            lease["spec"]["renewTime"] = micro_now()
            started = time.monotonic()
            try:
                async with limit, session.put(f"{server}{LEASE_PATH}/{name}", data=json.dumps(lease), headers=headers) as r:
                    body = await r.json()
                if r.status >= 300:
                    raise RuntimeError(str(body)[:200])
                leases[name] = body
                counts["renewed"] += 1
                latencies.append(time.monotonic() - started)
            except Exception:  # a conflict or a timeout: read it again for the next renewal
                counts["failed"] += 1
                with contextlib.suppress(Exception):
                    async with limit, session.get(f"{server}{LEASE_PATH}/{name}", headers=headers) as r:
                        leases[name] = await r.json()

        start = time.monotonic()
        tick = 0
        reported = start
        while not stop.is_set():
            late = max(0.0, time.monotonic() - (start + tick / 10))
            await asyncio.gather(*(renew(n) for n in names[tick % slots::slots]))
            tick += 1
            if time.monotonic() - reported >= 1.0:
                reports.put((os.getpid(), counts["renewed"], counts["failed"], late, latencies[:]))
                counts.update(renewed=0, failed=0)
                latencies.clear()
                reported = time.monotonic()
            pause = start + tick / 10 - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)


# --- processes -----------------------------------------------------------------------------------

class MeasuredProcess(Process):
    """A child process whose CPU time and peak memory the benchmark reads from /proc."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        super().__init__(name, argv, workdir, env={"PYTHONUNBUFFERED": "1"})

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def digits_model(cache: Path) -> Any:
    from edgemodel_dev.examples_models import write_digits_example

    return write_digits_example(cache, epochs=10)


@dataclass
class Result:
    nodes: int
    rollout_seconds: float
    writes_per_node: float
    agent_writes_per_node: float
    requests_per_node: float
    cpu_seconds: float
    cpu_seconds_total: float
    peak_rss_mib: float
    counts: dict[str, int]
    steady: Steady | None = None


@dataclass
class Steady:
    """The steady state: every node renewing its Lease, nothing to roll out."""

    seconds: float
    renewals_per_second: float
    operator_cpu_share: float
    emulator_cpu_share: float
    lag_first_half_ms: float
    lag_second_half_ms: float
    renew_p50_ms: float
    renew_p99_ms: float
    behind_seconds: float
    fresh: int


async def run_once(nodes: int, workdir: Path, example: Any, steady_seconds: float, warmup_seconds: float) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    api_port, store_port, metrics_port = free_port(), free_port(), free_port()
    procs: list[MeasuredProcess] = []
    proxy: CountingProxy | None = None
    fleet: SimFleet | None = None
    try:
        procs.append(MeasuredProcess("emulator", [str(ROOT / ".venv" / "bin" / "edgemodel-dev"), "up", "--nodes", "0", "--port", str(api_port),
                                          "--state-dir", str(workdir / "dev")], workdir))
        kubeconfig = workdir / "dev" / "kubeconfig"
        await wait_until_async("the emulator's kubeconfig", _exists(kubeconfig), 60, interval=0.1)
        upstream = Upstream.from_kubeconfig(kubeconfig)
        procs.append(MeasuredProcess("store", [EDGEMODEL, "store", "--root", str(workdir / "store"), "--port",
                                       str(store_port)], workdir))
        async with aiohttp.ClientSession() as session:
            await wait_until_async("the emulator's CRDs", _crds_ready(session, upstream), 60, interval=0.3)
            key = workdir / "signing.pem"
            subprocess.run([EDGEMODEL, "convert", "--generate-key", "--signing-key", str(key)], check=True,
                           capture_output=True, timeout=120)
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "signing", "namespace": "default"},
                      "data": {"private.pem": base64.b64encode(key.read_bytes()).decode()}}
            await _post(session, upstream, "/api/v1/namespaces/default/secrets", secret)

            fleet = SimFleet(upstream, nodes)
            await fleet.create()
            log(f"created {nodes} simulated EdgeAgents")
            proxy = CountingProxy(upstream)
            await proxy.start()
            operator = MeasuredProcess("operator", [
                EDGEMODEL, "operator", "--kubeconfig", str(proxy.write_kubeconfig(workdir / "operator.kubeconfig")),
                "--standalone", "--store-url", f"http://127.0.0.1:{store_port}", "--converter-image", "local",
                "--signing-key-secret", "signing", "--metrics-port", str(metrics_port), "--liveness-port", "0",
            ], workdir)
            procs.append(operator)
            steady = await measure_steady(session, fleet, procs[0], operator, metrics_port, nodes, steady_seconds,
                                          warmup_seconds)
            manifest = example.manifest(name="bench")
            manifest["spec"]["optimization"] = {"mode": "explicit", "int8": {"enabled": False}, "fp16": False,
                                                "targets": [{"hardwareClass": "cpu", "precisions": ["fp32"]}]}
            manifest["spec"]["selector"] = {"matchLabels": {"bench": "true"}}
            manifest["spec"]["rollout"] = {"strategy": "Canary", "steps": [10, 50, 100], "maxUnavailable": "25%",
                                           "analysis": {"windowSeconds": 1}}
            counts_start = Counter(proxy.counts)
            await _post(session, upstream, EM_PATH, manifest)

            status = await wait_until_async("the conversion", _converted(session, upstream), TIMEOUT_SECONDS, interval=0.1)
            t_ready, cpu_ready = time.monotonic(), operator.cpu_seconds()
            log(f"revision {status['targetRevision']} converted; rolling out to {nodes} nodes")
            await wait_until_async("the rollout", _available(session, upstream, nodes), TIMEOUT_SECONDS, interval=0.1)
            seconds = time.monotonic() - t_ready
            cpu_rollout = operator.cpu_seconds() - cpu_ready
            cpu_total, rss = operator.cpu_seconds(), operator.peak_rss_mib()
        # Everything the operator sent for this revision, from the apply (conversion included) to Available.
        during = Counter(proxy.counts)
        during.subtract(counts_start)
        writes = sum(v for (verb, _), v in during.items() if verb in ("post", "put", "patch", "delete"))
        agent_writes = sum(v for (verb, res), v in during.items() if verb == "patch" and res == "edgeagents")
        log(f"{nodes} nodes ready in {seconds:.1f} s; {writes} operator writes for the revision")
        return Result(nodes, seconds, writes / nodes, agent_writes / nodes, sum(during.values()) / nodes,
                      cpu_rollout, cpu_total, rss,
                      {f"{verb} {res}": v for (verb, res), v in sorted(during.items()) if v}, steady)
    finally:
        for proc in reversed(procs):  # the operator first: its watch streams through the proxy end with it
            await asyncio.to_thread(proc.stop)
        if fleet is not None:
            await fleet.close()
        if proxy is not None:
            await proxy.close()


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The operator's metrics (name{labels} -> value), {} while it does not answer."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


def _lag(before: dict[str, float], after: dict[str, float]) -> float:
    """Mean renewal -> operator lag (ms) between two scrapes."""
    count = after.get("edgemodel_operator_lease_lag_seconds_count", 0) - before.get("edgemodel_operator_lease_lag_seconds_count", 0)
    total = after.get("edgemodel_operator_lease_lag_seconds_sum", 0) - before.get("edgemodel_operator_lease_lag_seconds_sum", 0)
    return 1000 * total / count if count else float("nan")


async def measure_steady(session: aiohttp.ClientSession, fleet: SimFleet, emulator: MeasuredProcess,
                         operator: MeasuredProcess, metrics_port: int, nodes: int, seconds: float,
                         warmup: float) -> Steady | None:
    """CPU and lag while every node renews its Lease and nothing rolls out."""
    if seconds <= 0:
        return None

    async def fresh() -> float | None:
        value = (await scrape(session, metrics_port)).get('edgemodel_operator_agents{liveness="fresh"}')
        return value if value is not None and value >= nodes else None

    await wait_until_async("the operator seeing every Lease", fresh, TIMEOUT_SECONDS, interval=0.5)
    log(f"the operator sees {nodes} fresh Leases; {warmup:.0f} s for its start-up")
    await asyncio.sleep(warmup)
    log(f"steady state: {nodes} nodes renewing every {HEARTBEAT_SECONDS:.0f} s; measuring {seconds:.0f} s")
    first = await scrape(session, metrics_port)
    t0, op0, em0, renewed0 = time.monotonic(), operator.cpu_seconds(), emulator.cpu_seconds(), fleet.renewed
    fleet.renew_seconds.clear()
    await asyncio.sleep(seconds / 2)
    middle = await scrape(session, metrics_port)
    await asyncio.sleep(seconds / 2)
    last = await scrape(session, metrics_port)
    wall = time.monotonic() - t0
    latencies = sorted(fleet.renew_seconds) or [float("nan")]
    steady = Steady(
        seconds=wall, renewals_per_second=(fleet.renewed - renewed0) / wall,
        operator_cpu_share=(operator.cpu_seconds() - op0) / wall, emulator_cpu_share=(emulator.cpu_seconds() - em0) / wall,
        lag_first_half_ms=_lag(first, middle), lag_second_half_ms=_lag(middle, last),
        renew_p50_ms=1000 * latencies[len(latencies) // 2], renew_p99_ms=1000 * latencies[int(len(latencies) * 0.99)],
        behind_seconds=fleet.behind, fresh=int(last.get('edgemodel_operator_agents{liveness="fresh"}', 0)),
    )
    log(f"steady state: {steady}")
    return steady


def _exists(path: Path) -> Any:
    async def check() -> bool:
        return path.is_file()
    return check


async def _post(session: aiohttp.ClientSession, upstream: Upstream, path: str, body: dict[str, Any]) -> None:
    async with session.post(upstream.server + path, json=body, ssl=upstream.ssl,
                            headers={"Authorization": f"Bearer {upstream.token}"}) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {(await resp.text())[:300]}")


async def _get(session: aiohttp.ClientSession, upstream: Upstream, path: str) -> dict[str, Any] | None:
    try:
        async with session.get(upstream.server + path, ssl=upstream.ssl,
                               headers={"Authorization": f"Bearer {upstream.token}"}) as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


def _crds_ready(session: aiohttp.ClientSession, upstream: Upstream) -> Any:
    async def check() -> bool:
        return await _get(session, upstream, EA_PATH) is not None
    return check


def _converted(session: aiohttp.ClientSession, upstream: Upstream) -> Any:
    async def check() -> dict[str, Any] | None:
        em = await _get(session, upstream, f"{EM_PATH}/bench") or {}
        status = em.get("status") or {}
        if any(c["type"] == "Converted" and c["status"] == "True" for c in status.get("conditions", [])):
            return status
        if status.get("phase") == "Failed":
            raise RuntimeError(f"the conversion failed: {json.dumps(status.get('conditions'))[:600]}")
        return None
    return check


def _available(session: aiohttp.ClientSession, upstream: Upstream, nodes: int) -> Any:
    async def check() -> bool:
        status = ((await _get(session, upstream, f"{EM_PATH}/bench")) or {}).get("status") or {}
        return status.get("phase") == "Available" and status.get("ready") == f"{nodes}/{nodes}"
    return check


def table(results: list[Result], load: str, command: str) -> str:
    lines = [
        "# Operator rollout at scale",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work; load average "
        f"(1/5/15 min) when measured: {load}.",
        "",
        "Real operator (`edgemodel operator`), API emulator (`edgemodel-dev up`), real conversion Job "
        "(digits CNN, FP32 only); simulated agents in the harness (a Lease renewal every 10 s, one status write "
        f"reporting Ready {LOAD_DELAY_SECONDS:.1f} s after each new assignment). Canary steps 10/50/100 %, "
        "maxUnavailable 25 %, analysis window 1 s (from the agents' reported status, no Prometheus). Operator requests are counted by a proxy between it and "
        "the API, from `kubectl apply` of the EdgeModel to Available (conversion included; watch streams "
        "count once when opened). Targets (issue 21): 10,000 nodes in under 60 s, at most 2 operator writes per node, "
        "peak RSS under 500 MB; steady state: operator under 10 % of a core, no growing lag.",
        "",
        "| nodes | revision ready -> all nodes Ready | operator writes / node | EdgeAgent patches / node "
        "| all operator requests / node | operator CPU (rollout / whole run) | operator peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.nodes:,} | {r.rollout_seconds:.1f} s | {r.writes_per_node:.2f} | "
                     f"{r.agent_writes_per_node:.2f} | {r.requests_per_node:.2f} | {r.cpu_seconds:.1f} s / "
                     f"{r.cpu_seconds_total:.1f} s | {r.peak_rss_mib:.0f} MiB |")
    lines += ["", f"Steady state: every node renews its Lease every {HEARTBEAT_SECONDS:.0f} s, nothing rolls out "
              "(CPU as a share of one core; lag = renewTime to the operator seeing the renewal, mean per half of "
              "the window; a second half far above the first would mean the emulator falls behind):", "",
              "| nodes | renewals/s | operator CPU | emulator CPU | lag 1st / 2nd half | renewal PUT p50 / p99 "
              "| schedule behind | fresh |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.steady is not None:
            st = r.steady
            lines.append(f"| {r.nodes:,} | {st.renewals_per_second:.0f} | {100 * st.operator_cpu_share:.1f} % | "
                         f"{100 * st.emulator_cpu_share:.0f} % | {st.lag_first_half_ms:.0f} / {st.lag_second_half_ms:.0f} ms "
                         f"| {st.renew_p50_ms:.1f} / {st.renew_p99_ms:.1f} ms | {st.behind_seconds:.2f} s | {st.fresh:,} |")
    lines += ["", "Operator requests for the revision, by verb and resource:", ""]
    for r in results:
        lines.append(f"- {r.nodes:,} nodes: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()))
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edgemodel-bench-operator-"))
    log(f"working in {workdir}")
    example = digits_model(workdir / "digits")
    results = []
    loads = []
    for nodes in args.nodes:
        log(f"fleet of {nodes} nodes")
        loads.append(" / ".join(f"{x:.2f}" for x in os.getloadavg()))
        results.append(await run_once(nodes, workdir / f"n{nodes}", example, args.steady_seconds, args.warmup_seconds))
    command = "python bench/operator/rollout_scale.py " + " ".join(sys.argv[1:])
    text = table(results, "; ".join(f"{n} nodes: {load}" for n, load in zip(args.nodes, loads, strict=True)),
                 command)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000], help="fleet sizes")
    parser.add_argument("--out", help="write the Markdown table here (e.g. bench/results/operator.md)")
    parser.add_argument("--workdir", help="keep logs and state here (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--steady-seconds", type=float, default=30.0,
                        help="length of the steady-state window before the rollout (0: skip it)")
    parser.add_argument("--warmup-seconds", type=float, default=20.0,
                        help="wait this long after the operator sees every Lease before measuring the steady state")
    args = parser.parse_args()
    if any(n < 1 for n in args.nodes):
        parser.error("--nodes: every fleet size must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
