"""Pipeline benchmark: ResNet-18 over three stage processes held to 0.1 / 0.2 / 0.4 of a core.

    nice -n 10 .venv/bin/python bench/pipeline/run.py --seconds 12 --alternatives 4

1. Profiles every candidate cut of ResNet-18 (random weights, bench/split/models.py) once here,
   unthrottled (the reference), and measures each device's slowdown by serving the whole model in its
   CPU-quota cgroup (cgroup v1, 10 ms period): also the single-node baselines (latency, throughput).
2. Plans with :func:`edgemodel.split.chain_planner.plan_chain` for the devices [entry 0.1, 0.4, 0.2]
   (the per-node device list the operator passes to the conversion Job: measured slowdown and overhead)
   (the entry is the weakest: a camera-class device that receives the requests), links 100 Mbit/s,
   2 ms RTT (shaping proxies, ``edgemodel.split.shaping``, between consecutive stages), INT8 features,
   mTLS on every hop.
3. Serves the planner's choice and the next best predicted plans as real processes
   (``edgemodel.split.stages``), measures latency (one request at a time) and throughput (closed loop,
   ``--concurrency`` in flight) of each; the planner's choice vs the best measured plan.
4. Under load on the chosen plan, kills the last stage: errors, and time until answers come from the
   entry's whole model.

Writes bench/results/pipeline.json and prints a summary. Numbers depend on machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.split import models  # noqa: E402
from edgemodel.split.chain import build_chain, chain_costs  # noqa: E402
from edgemodel.split.chain_devices import MEASURED, PlanDevices  # noqa: E402
from edgemodel.split.chain_planner import (  # noqa: E402
    ChainLinks,
    ChainObjective,
    ChainPlan,
    Device,
    enumerate_plans,
    format_chain,
    plan_chain,
)
from edgemodel.split.codec import WireFormat  # noqa: E402
from edgemodel.split.devpki import make_pki  # noqa: E402
from edgemodel.split.graph import find_cut_candidates, load_model  # noqa: E402
from edgemodel.split.planner import Link  # noqa: E402
from edgemodel.split.profile import profile_split  # noqa: E402
from edgemodel.split.remote import RemoteTail, TlsFiles  # noqa: E402
from edgemodel.split.stages import StageProcess, start_chain  # noqa: E402

log = logging.getLogger("bench.pipeline")
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CPUS = {"entry": 0.1, "mid": 0.4, "last": 0.2}
"""Device order for the planner: the entry (weakest, receives requests), then the pool."""


@contextlib.contextmanager
def cgroups(fractions: dict[str, float]) -> Iterator[dict[str, Path]]:
    if not (CGROUP_CPU / "cgroup.procs").exists():
        raise SystemExit(f"needs the cgroup-v1 cpu controller at {CGROUP_CPU} (root)")
    groups = {}
    try:
        for name, fraction in fractions.items():
            group = CGROUP_CPU / f"edgemodel-bench-pipeline-{os.getpid()}-{name}"
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text("10000")
            (group / "cpu.cfs_quota_us").write_text(str(int(10000 * fraction)))
            groups[name] = group
        yield groups
    finally:
        for group in groups.values():
            with contextlib.suppress(OSError):
                group.rmdir()


class Proxies:
    """Link-shaping proxies (one process each), stopped together."""

    def __init__(self, mbit: float, rtt_ms: float) -> None:
        self.mbit, self.rtt_ms, self.procs = mbit, rtt_ms, []  # type: ignore[var-annotated]

    def to(self, _index: int, stage: StageProcess) -> str:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgemodel.split.shaping",
                "--upstream",
                f"127.0.0.1:{stage.port}",
                "--mbit",
                str(self.mbit),
                "--rtt-ms",
                str(self.rtt_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening 127.0.0.1:PORT -> ..."
        port = int(line.split()[1].rsplit(":", 1)[1])
        return f"https://127.0.0.1:{port}"

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        self.procs.clear()


async def measure(
    url: str,
    tls: TlsFiles,
    image: np.ndarray,
    seconds: float,
    concurrency: int,
    kill: StageProcess | None = None,
) -> dict[str, Any]:
    """Sequential latency (10 requests) then closed-loop throughput; optionally kill a stage midway."""
    async with RemoteTail(
        url, "resnet18", "1", "input", wire=WireFormat.parse("fp32"), tls=tls, timeout_s=120, cooldown_s=0
    ) as client:
        feeds = {"input": image}
        await client.infer(feeds)  # warm the chain
        lat = []
        for _ in range(10):
            start = time.perf_counter()
            await client.infer(feeds)
            lat.append(time.perf_counter() - start)
        done: list[float] = []
        errors: list[str] = []
        killed_at: list[float] = []
        t0 = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - t0 < seconds:
                try:
                    await client.infer(feeds)
                    done.append(time.perf_counter())
                except Exception as exc:  # counted: the target is 0
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if kill is not None and not killed_at and time.perf_counter() - t0 > seconds / 3:
                    kill.process.kill()
                    killed_at.append(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {
        "latencyMedianMs": statistics.median(lat) * 1e3,
        "latencyMinMs": min(lat) * 1e3,
        "requests": len(done),
        "errors": len(errors),
        "errorSamples": errors[:3],
        "throughputRps": len(done) / elapsed,
        "seconds": elapsed,
    }
    if killed_at:
        after = sorted(t - killed_at[0] for t in done if t > killed_at[0])
        out["killedAfterS"] = killed_at[0] - t0
        out["firstAnswerAfterKillS"] = after[0] if after else None
        gaps = np.diff([0.0, *after]) if after else np.array([])
        out["longestGapAfterKillS"] = float(gaps.max()) if gaps.size else None
        out["throughputAfterKillRps"] = len(after) / max(1e-9, (t0 + elapsed) - killed_at[0])
    return out


def metrics(stage: StageProcess, tls: TlsFiles) -> dict[str, float]:
    with urllib.request.urlopen(stage.url + "/metrics", context=tls.client_context(), timeout=10) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("edgemodel_pipeline_requests_total{"):
            path = line.split('path="')[1].split('"')[0]
            found[path] = found.get(path, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def trivial_model(path: Path, shape: tuple[int, ...]) -> Path:
    """A model taking the benchmark's input and returning 1000 numbers with next to no compute."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("Tile", ["pooled", "reps"], ["logits"])],
        "trivial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 3 * 334])],
        [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 334])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def serve_and_measure(
    plan: ChainPlan,
    model_path: Path,
    work: Path,
    groups: dict[str, Path],
    pki: Any,
    args: argparse.Namespace,
    image: np.ndarray,
    kill_last: bool = False,
) -> dict[str, Any]:
    tag = "-".join(plan.devices) + "@" + ",".join(plan.cuts) if plan.cuts else plan.devices[0]
    out_dir = work / f"chain-{abs(hash(tag)) % 10**8}"
    tls_files = {
        "ca": pki.ca,
        "server_cert": pki.server_cert,
        "server_key": pki.server_key,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    if plan.cuts:
        stages = build_chain(model_path, [{"input": image}], out_dir, plan.cuts, wire="fp32").paths
    else:
        stages = [model_path]
    proxies = Proxies(args.mbit, args.rtt_ms)
    names = plan.devices

    def place(index: int, pid: int) -> None:
        (groups[names[index - 1]] / "cgroup.procs").write_text(str(pid))

    log.info("Serving %s", tag)
    procs = start_chain(
        stages,
        plan.cuts,
        "input",
        full=model_path if plan.cuts else None,
        wire=args.wire,
        model="resnet18",
        tls=tls_files,
        log_dir=out_dir if plan.cuts else work,
        placement=place,
        via=proxies.to,
        cooldown_s=1.0,
        threads=1,
    )
    tls = TlsFiles(pki.ca, pki.client_cert, pki.client_key)
    try:
        result = asyncio.run(
            measure(
                procs[0].url,
                tls,
                image,
                args.seconds,
                args.concurrency,
                kill=procs[-1] if kill_last and len(procs) > 1 else None,
            )
        )
        result["entryPaths"] = metrics(procs[0], tls)
    finally:
        for p in procs:
            p.stop()
        proxies.close()
    result.update(
        plan=tag,
        predictedLatencyMs=plan.latency_ms,
        predictedPeriodMs=plan.period_ms,
        predictedThroughputRps=plan.throughput_rps,
    )
    log.info("%s: %s", tag, {k: v for k, v in result.items() if k != "errorSamples"})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="closed-loop time per plan")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--alternatives", type=int, default=4, help="other plans measured besides the planner's"
    )
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--rtt-ms", type=float, default=2.0)
    parser.add_argument("--wire", default="int8")
    parser.add_argument("--objective", default="throughput", choices=["latency", "throughput"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgemodel-bench-pipeline"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = models.resnet18(args.workdir, eval_samples=4)
    model = load_model(bench.onnx_path)
    image = bench.timing_input
    cuts = find_cut_candidates(model)
    log.info("Profiling %d cuts here (reference, 1 thread)", len(cuts))
    profile = profile_split(model, {"input": image}, threads=1, runs=6, warmup=1, wire_formats=(args.wire,))
    costs = chain_costs(profile, args.wire)  # robust to a noisy reference: segments sum to the whole model
    pki = make_pki(args.workdir / "pki")
    load_start = os.getloadavg()
    results: dict[str, Any] = {
        "settings": vars(args) | {"workdir": str(args.workdir), "out": str(args.out)},
        "cpus": CPUS,
        "referenceFullMs": profile.full_ms,
        "cuts": len(cuts),
    }
    with cgroups(CPUS) as groups:
        singles = {}
        for name in CPUS:
            plan = plan_chain(costs, [Device(name)], ChainLinks(), ChainObjective.LATENCY)
            singles[name] = serve_and_measure(plan, bench.onnx_path, args.workdir, groups, pki, args, image)
        results["singleNode"] = singles
        # what serving a request costs each device beyond the model: the same request to a trivial model
        trivial = trivial_model(args.workdir / "trivial.onnx", image.shape)
        quick = argparse.Namespace(**{**vars(args), "seconds": 2.0})
        overhead = {}
        for name in CPUS:
            plan = plan_chain(costs, [Device(name)], ChainLinks(), ChainObjective.LATENCY)
            overhead[name] = serve_and_measure(plan, trivial, args.workdir, groups, pki, quick, image)["latencyMinMs"]
        results["overheadMs"] = overhead
        slowdown = {n: max(0.05, r["latencyMinMs"] - overhead[n]) / profile.full_ms for n, r in singles.items()}
        results["slowdown"] = slowdown
        # the device list as the operator hands it to the conversion Job (EDGEMODEL_PIPELINE_DEVICES) and the
        # Job records it in chain.json (plan.deviceSpecs): measured slowdowns and serving overheads per node
        given = PlanDevices(tuple(Device(n, slowdown[n], overhead_ms=overhead[n]) for n in CPUS),
                            (MEASURED,) * len(CPUS), reason="measured in their cgroups")
        devices = list(PlanDevices.from_json(given.to_json()).devices)
        results["deviceSpecs"] = given.specs()
        links = ChainLinks(Link(args.mbit, args.rtt_ms))
        objective = ChainObjective(args.objective)
        chosen = plan_chain(costs, devices, links, objective)
        log.info("Planner's choice:\n%s", format_chain(chosen))
        ranked = sorted(
            (p for p in enumerate_plans(costs, devices, links, objective) if len(p.stages) > 1),
            key=lambda p: p.score(),
        )
        by_devices: dict[tuple[str, ...], ChainPlan] = {}
        for p in ranked:  # the best plan of every other device set: different plans, not near-copies
            by_devices.setdefault(tuple(p.devices), p)
        others = [p for d, p in by_devices.items() if d != tuple(chosen.devices)][: args.alternatives]
        if len(others) < args.alternatives:  # then the next best on the chosen devices
            others += [p for p in ranked if p.stages != chosen.stages and p not in others][
                : args.alternatives - len(others)
            ]
        measured = [
            serve_and_measure(p, bench.onnx_path, args.workdir, groups, pki, args, image)
            for p in [chosen, *others]
        ]
        results["plans"] = measured
        results["chosen"] = chosen.to_dict()
        results["fault"] = serve_and_measure(
            chosen, bench.onnx_path, args.workdir, groups, pki, args, image, kill_last=True
        )
    key = "throughputRps"
    best_single_thr = max(r[key] for r in singles.values())
    best_single_lat = min(r["latencyMedianMs"] for r in singles.values())
    chosen_m = measured[0]
    best_measured = (
        max(measured, key=lambda r: r[key])
        if objective is ChainObjective.THROUGHPUT
        else min(measured, key=lambda r: r["latencyMedianMs"])
    )
    results["summary"] = {
        "chosenPlan": chosen_m["plan"],
        "throughputVsBestSingle": chosen_m[key] / best_single_thr,
        "throughputVsEntryAlone": chosen_m[key] / singles["entry"][key],
        "latencyEntryAloneOverChosen": singles["entry"]["latencyMedianMs"] / chosen_m["latencyMedianMs"],
        "latencyBestSingleOverChosen": best_single_lat / chosen_m["latencyMedianMs"],
        "bestMeasuredPlan": best_measured["plan"],
        "chosenVsBestMeasured": (
            best_measured[key] / chosen_m[key]
            if objective is ChainObjective.THROUGHPUT
            else chosen_m["latencyMedianMs"] / best_measured["latencyMedianMs"]
        ),
        "faultErrors": results["fault"]["errors"],
        "faultFirstAnswerAfterKillS": results["fault"].get("firstAnswerAfterKillS"),
        "faultLongestGapAfterKillS": results["fault"].get("longestGapAfterKillS"),
    }
    results["loadAverage"] = {"start": list(load_start), "end": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
