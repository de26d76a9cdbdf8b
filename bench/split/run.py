"""Split-inference benchmark: edge and cloud as separate processes over an emulated link.

    sudo-less root on Linux: .venv/bin/python bench/split/run.py            # both models, 1/10/100 Mbit/s, 20 ms
    .venv/bin/python bench/split/run.py --models digits --mbit 10 --edge-cpu 0.25

Per model: a cloud process (ONNX Runtime, ``--cloud-threads``) profiles every tail and serves
them over HTTPS with mTLS; one shaping proxy per bandwidth emulates the link (this kernel has no
``netem`` qdisc); an edge process runs in a cgroup-v1 CPU quota (``--edge-cpu`` of one core, 1
thread: an emulated weaker device), profiles every head, and times edge-only, cloud-only and every
cut over every link. This driver then measures accuracy of every cut and wire format offline,
asks the planner for its choice from the two profiles and the declared link, and writes the raw
results to ``bench/split/results/<model>.json`` and the report to ``bench/results/split.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))  # the repository root, for bench.convert.models

import models  # noqa: E402
import report  # noqa: E402

from edgemodel.split import codec  # noqa: E402
from edgemodel.split.graph import find_cut_candidates, load_model, split_model  # noqa: E402
from edgemodel.split.planner import Link, choose_cut  # noqa: E402
from edgemodel.split.profile import SplitProfile, planner_costs  # noqa: E402
from edgemodel.split.runtime import OrtPart  # noqa: E402

log = logging.getLogger("bench.split")
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
ACCURACY_WIRES = ("fp32", "fp16", "int8", "int8+zstd")


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float, what: str) -> str:
    """The first stdout line starting with ``prefix`` (bounded); fails naming the process if it died."""
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before printing {prefix!r}")
    raise TimeoutError(f"{what} did not print {prefix!r} within {timeout_s:.0f} s")


@contextlib.contextmanager
def process(cmd: list[str], what: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """Start a process; terminate it (then kill) on the way out."""
    log.info("Started %s: %s", what, shlex.join(cmd))
    proc = subprocess.Popen(cmd, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def cpu_cgroup(fraction: float) -> Iterator[Path | None]:
    """A cgroup-v1 cpu group limited to ``fraction`` of one core (10 ms CFS period); None when fraction >= 1."""
    if fraction >= 1:
        yield None
        return
    if not (CGROUP_CPU / "cgroup.procs").exists():
        raise SystemExit(f"--edge-cpu {fraction}: needs the cgroup-v1 cpu controller at {CGROUP_CPU} (root); "
                         f"pass --edge-cpu 1 to run the edge unthrottled")
    group = CGROUP_CPU / f"edgemodel-bench-edge-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text(str(int(10000 * fraction)))
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def accuracy(bench: models.BenchModel, threads: int) -> dict[str, Any]:
    """Per cut and wire format: agreement with the unsplit model (and label accuracy when labels exist)."""
    model = load_model(bench.onnx_path)
    full = OrtPart(model.SerializeToString(), threads=threads)
    x = bench.eval_inputs
    reference = full.run({bench.input_name: x})["logits"]
    ref_top1 = reference.argmax(1)
    out: dict[str, Any] = {"samples": int(len(x)), "cuts": {}}
    if bench.eval_labels is not None:
        out["unsplitAccuracy"] = float((ref_top1 == bench.eval_labels).mean())
    for cut in find_cut_candidates(model):
        split = split_model(model, cut)
        head = OrtPart(split.head.SerializeToString(), threads=threads)
        tail = OrtPart(split.tail.SerializeToString(), threads=threads)
        per_sample = [head.run({bench.input_name: x[i:i + 1]}) for i in range(len(x))]
        entry: dict[str, Any] = {}
        for wire in ACCURACY_WIRES:
            fmt = codec.WireFormat.parse(wire)
            messages = [codec.encode(f, fmt) for f in per_sample]
            decoded = np.concatenate([codec.decode(m)[cut.tensor] for m in messages])
            logits = tail.run({cut.tensor: decoded})["logits"]
            top1 = logits.argmax(1)
            result = {"agreement": float((top1 == ref_top1).mean()),
                      "maxAbsDiff": float(np.max(np.abs(logits - reference))),
                      "meanBytes": float(np.mean([len(m) for m in messages]))}
            if bench.eval_labels is not None:
                result["accuracy"] = float((top1 == bench.eval_labels).mean())
            entry[wire] = result
        out["cuts"][cut.tensor] = entry
        log.info("Accuracy at %s: %s", cut.tensor,
                 ", ".join(f"{w} {v['agreement']:.3f}" for w, v in entry.items()))
    return out


def plans(edge: SplitProfile, cloud: SplitProfile, links: list[dict[str, Any]], wire: str,
          input_wire: str, rtt_key: str) -> list[dict[str, Any]]:
    """The planner's choice per link, with the declared (``rttMs``) or the measured (``measuredRttMs``) RTT."""
    costs = planner_costs(edge, cloud, wire=wire, input_wire=input_wire)
    return [choose_cut(costs, Link(link["mbit"], link[rtt_key])).to_dict() for link in links]


def bench_model(bench: models.BenchModel, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    timing = workdir / f"{bench.name}-input.npy"
    np.save(timing, bench.timing_input)
    tls_dir = workdir / f"{bench.name}-pki" if args.tls else None
    started = {"loadAverage": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    cloud_cmd = [py, str(HERE / "cloud.py"), "--model", str(bench.onnx_path), "--name", bench.name,
                 "--input", str(timing), "--threads", str(args.cloud_threads),
                 "--profile-out", str(workdir / f"{bench.name}-cloud-profile.json")]
    if tls_dir:
        cloud_cmd += ["--tls-dir", str(tls_dir)]
    with process(cloud_cmd, "the cloud process", stdout=subprocess.PIPE, env=env) as cloud:
        port = int(wait_line(cloud, "READY", 1800, "the cloud process").split()[1])
        with contextlib.ExitStack() as stack:
            links = []
            for mbit in args.mbit:
                stats = workdir / f"{bench.name}-proxy-{mbit:g}.json"
                proxy = stack.enter_context(process(
                    [py, "-m", "edgemodel.split.shaping", "--upstream", f"127.0.0.1:{port}", "--mbit", str(mbit),
                     "--rtt-ms", str(args.rtt_ms), "--stats-file", str(stats)],
                    f"the {mbit:g} Mbit/s proxy", stdout=subprocess.PIPE, env=env))
                proxy_port = int(wait_line(proxy, "listening", 60, "the proxy").split()[1].rsplit(":", 1)[1])
                scheme = "https" if tls_dir else "http"
                links.append({"mbit": mbit, "rttMs": args.rtt_ms, "url": f"{scheme}://127.0.0.1:{proxy_port}",
                              "statsFile": str(stats)})
            edge_out = workdir / f"{bench.name}-edge.json"
            edge_cmd = [py, str(HERE / "edge.py"), "--model", str(bench.onnx_path), "--name", bench.name,
                        "--input", str(timing), "--links", json.dumps(links), "--wire", args.wire,
                        "--input-wire", args.input_wire, "--threads", "1",
                        "--seconds-per-link", str(args.seconds_per_link),
                        "--profile-out", str(workdir / f"{bench.name}-edge-profile.json"), "--out", str(edge_out)]
            if tls_dir:
                edge_cmd += ["--tls-dir", str(tls_dir)]
            with cpu_cgroup(args.edge_cpu) as group:
                def enter_group() -> None:
                    if group is not None:
                        (group / "cgroup.procs").write_text(str(os.getpid()))
                with process(edge_cmd, "the edge process", env=env, preexec_fn=enter_group) as edge:
                    code = edge.wait(args.edge_timeout_s)
                    if code != 0:
                        raise RuntimeError(f"the edge process failed with exit code {code}; see its log above")
    edge_profile = SplitProfile.load(workdir / f"{bench.name}-edge-profile.json")
    cloud_profile = SplitProfile.load(workdir / f"{bench.name}-cloud-profile.json")
    measured = json.loads(edge_out.read_text())
    log.info("Measuring accuracy of every cut and wire format for %s", bench.name)
    acc = accuracy(bench, args.cloud_threads)
    return {"model": bench.name, "note": bench.note, "started": started,
            "finished": {"loadAverage": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S")},
            "settings": {"edgeCpu": args.edge_cpu, "cloudThreads": args.cloud_threads, "wire": args.wire,
                         "inputWire": args.input_wire, "rttMs": args.rtt_ms, "mbit": args.mbit, "tls": args.tls},
            "edgeProfile": edge_profile.to_dict(), "cloudProfile": cloud_profile.to_dict(),
            "measured": measured,
            "plans": plans(edge_profile, cloud_profile, measured["links"], args.wire, args.input_wire,
                           "measuredRttMs"),
            "plansDeclaredRtt": plans(edge_profile, cloud_profile, measured["links"], args.wire, args.input_wire,
                                      "rttMs"),
            "accuracy": acc}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,digits", help="comma-separated: resnet18, digits")
    parser.add_argument("--mbit", default="1,10,100", help="comma-separated link bandwidths in Mbit/s")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--edge-cpu", type=float, default=0.25, help="edge CPU quota in cores (1 = unthrottled)")
    parser.add_argument("--cloud-threads", type=int, default=1,
                        help="cloud ORT threads (1: 2 threads on 2 shared cores were erratic under load)")
    parser.add_argument("--wire", default="int8", help="feature wire format for the latency sweep")
    parser.add_argument("--input-wire", default="fp32", help="raw input format for cloud-only")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="plain HTTP instead of mTLS")
    parser.add_argument("--seconds-per-link", type=float, default=150.0, help="time budget of each link's rounds")
    parser.add_argument("--edge-timeout-s", type=float, default=5400)
    parser.add_argument("--tag", help="names the results file <model>-<tag>.json (default: edge<edge-cpu>)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench-split")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "split.md")
    args = parser.parse_args()
    args.mbit = [float(m) for m in args.mbit.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s driver %(levelname)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    builders = {"resnet18": models.resnet18, "digits": models.digits}
    for name in args.models.split(","):
        if name not in builders:
            raise SystemExit(f"--models: {name!r} is not one of {sorted(builders)}")
        result = bench_model(builders[name](args.workdir), args, args.workdir)
        result["command"] = shlex.join([Path(sys.executable).relative_to(ROOT).as_posix()
                                        if sys.executable.startswith(str(ROOT)) else sys.executable,
                                        "bench/split/run.py", *sys.argv[1:]])
        result["tag"] = args.tag or f"edge{args.edge_cpu:g}"
        out = args.results / f"{name}-{result['tag']}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        log.info("Wrote %s", out)
    report.write_report(args.results, args.report)
    log.info("Wrote %s", args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
