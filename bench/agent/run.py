"""The agent benchmark: raw ONNX Runtime vs this agent over HTTP vs KServe's ModelServer.

Same ONNX files (the digits CNN and ResNet-18 from ``bench.agent.models``), same machine, one
run, concurrency 1, 8 and 32, a keep-alive aiohttp load generator (``bench.agent.loadgen``) in
its own process, JSON and binary-extension bodies. The agent is measured twice: with its
defaults, and with dynamic batching without queue delay (requests that queue while a run is busy
share the next run). Every point measures raw ORT and each server back to back. Prints a
Markdown table (and writes it, with the raw JSON beside it, to ``--out``).

    .venv/bin/python -m bench.agent.run --kserve-python /tmp/kserve-venv/bin/python --out bench/results/agent.md

KServe runs in its own virtualenv (``python3 -m venv /tmp/kserve-venv &&
/tmp/kserve-venv/bin/pip install kserve onnxruntime numpy``); without ``--kserve-python`` its
rows are left out. The machine is shared: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from bench.agent import raw_ort
from bench.agent.models import MODELS, build
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def server(argv: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a server process until the block ends; wait (bounded) for its readiness URL."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            wait_until(f"{ready_url} to be ready", lambda: http_ok(ready_url, timeout=1), 120, process=proc,
                       explain=lambda: f"see {log}")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def load(url: str, model: str, shape: tuple[int, ...], binary: bool, concurrency: int, duration: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.agent.loadgen", "--url", url, "--model", model, "--shape", ",".join(map(str, shape)),
            "--concurrency", str(concurrency), "--duration", str(duration)] + (["--binary"] if binary else [])  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=duration + 300, check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/edgemodel-bench"))
    parser.add_argument("--kserve-python", help="python of a virtualenv with kserve installed")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--out", type=Path, help="write the Markdown table here and the raw JSON beside it")
    parser.add_argument(
        "--agent", action="append", metavar="LABEL=FLAGS",
        help="an agent configuration to measure (repeatable); default: the defaults, and dynamic batching "
        "without queue delay ('edge agent=' and 'edge agent, batching=--batching --max-queue-delay-ms 0')",
    )
    parser.add_argument("--baseline", metavar="LABEL=DIR",
                        help="also measure an agent run from another source tree (e.g. `git archive` of the previous "
                        "commit's edge_agent and edgemodel into DIR), interleaved with the others")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies")
    args = parser.parse_args()

    paths = build(args.models_dir)
    names = args.models.split(",")
    rows: list[dict[str, object]] = []
    logs = args.models_dir / "logs"
    logs.mkdir(exist_ok=True)
    load_before = load_average()
    print(f"load average before: {load_before}", flush=True)

    with ExitStack() as stack:
        targets: dict[str, list[tuple[str, str]]] = {name: [] for name in names}
        configs = args.agent or ["edge agent=", "edge agent, batching=--batching --max-queue-delay-ms 0"]
        runs = [(config, None) for config in configs]
        if args.baseline:
            label, _, tree = args.baseline.partition("=")
            runs.insert(0, (f"{label}=", dict(os.environ, PYTHONPATH=tree)))
        for index, (config, env) in enumerate(runs):
            label, _, flags = config.partition("=")
            port = free_port()
            agent_argv = [str(ROOT / ".venv" / "bin" / "edgemodel"), "agent", "--port", str(port),
                          *[f"--model={n}={paths[n]}" for n in names], *flags.split()]  # fmt: skip
            stack.enter_context(server(agent_argv, f"http://127.0.0.1:{port}/v2/health/ready", logs / f"agent-{index}.log", env))
            for name in names:
                targets[name].append((label, f"http://127.0.0.1:{port}"))
        if args.kserve_python:
            for name in names:
                ks_port = free_port()
                ks_argv = [args.kserve_python, str(ROOT / "bench" / "agent" / "kserve_server.py"), "--model_path",
                           str(paths[name]), "--model_name", name, "--http_port", str(ks_port), "--grpc_port", str(free_port())]  # fmt: skip
                stack.enter_context(server(ks_argv, f"http://127.0.0.1:{ks_port}/v2/health/ready", logs / f"kserve-{name}.log"))
                targets[name].append(("KServe 0.21", f"http://127.0.0.1:{ks_port}"))
        # Interleaved: every point measures raw ORT and each server back to back, so that the load
        # of the shared machine drifts as little as possible between the numbers compared.
        for name in names:
            shape = MODELS[name][1]
            for c in (int(x) for x in args.concurrency.split(",")):
                r = raw_ort.run(str(paths[name]), "input", shape, c, len(os.sched_getaffinity(0)), 1, args.duration)
                rows.append({"server": "raw ORT", "model": name, "body": "-", **asdict(r)})
                print(rows[-1], flush=True)
                for binary in (False, True):
                    for label, url in targets[name]:
                        result = load(url, name, shape, binary, c, args.duration)
                        rows.append({"server": label, "model": name, "body": "binary" if binary else "json", **result})
                        print(rows[-1], flush=True)
            best = raw_ort.best_throughput(str(paths[name]), "input", shape, args.duration / 2)
            rows.append({"server": "raw ORT best", "model": name, "body": "-", **asdict(best)})
            print(rows[-1], flush=True)

    load_after = load_average()
    table = render(rows, load_before, load_after, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"load_before": load_before, "load_after": load_after, "rows": rows}, indent=1))


def render(rows: list[dict[str, object]], before: str, after: str, args: argparse.Namespace) -> str:
    lines = [
        f"Load average (1, 5, 15 min) before: {before}; after: {after}. {len(os.sched_getaffinity(0))} CPUs, "
        f"{args.duration:g} s per point.",
        "",
        "| model | server | body | concurrency | p50 ms | p99 ms | throughput /s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        conc = r["concurrency"]
        if r["server"] == "raw ORT best":
            conc = f"{r['concurrency']} x batch {r['batch']}, {r['intra_op_threads']} thr"
        lines.append(f"| {r['model']} | {r['server']} | {r['body']} | {conc} | {r['p50_ms']} | {r['p99_ms']} | {r['throughput']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
