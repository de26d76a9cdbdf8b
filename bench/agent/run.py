"""The agent benchmark: raw ONNX Runtime vs this agent over HTTP and gRPC vs KServe's ModelServer.

Same ONNX files (the digits CNN and ResNet-18 from ``bench.agent.models``), same machine, one
run, concurrency 1, 8 and 32, load generators in their own process: keep-alive HTTP/1.1 for REST
(``bench.agent.loadgen``: JSON and binary-extension bodies) and grpcio for gRPC
(``bench.agent.grpc_loadgen``: ``raw_input_contents``), each with its fastest client by default;
``--floors`` adds bare servers that answer at once (the load generators' own ceiling). The agent is measured twice: with its
defaults, and with dynamic batching without queue delay (requests that queue while a run is busy
share the next run). Every point measures raw ORT and each server back to back, and
``--repeats`` repeats the whole sequence (interleaved: the machine's load drifts between repeats,
not between the numbers compared); the summary takes the median over the repeats. Prints a
Markdown table (and writes it, with the raw JSON beside it, to ``--out``).

    .venv/bin/python -m bench.agent.run --kserve-python /tmp/kserve-venv/bin/python --out bench/results/agent.md
    .venv/bin/python -m bench.agent.run --models digits --concurrency 1,32 --repeats 3 --duration 3 \
        --agent "edge agent=" --out bench/results/agent-grpc.md

KServe runs in its own virtualenv (``python3 -m venv /tmp/kserve-venv &&
/tmp/kserve-venv/bin/pip install kserve onnxruntime numpy``); without ``--kserve-python`` its
rows are left out. The machine is shared: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from bench.agent import floor, raw_ort
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


CLIENTS = {"rest": "raw", "grpc": "sync"}
"""The load generators' clients (``--rest-client``, ``--grpc-client``): the fastest of each by default."""


def load(url: str, model: str, shape: tuple[int, ...], binary: bool, concurrency: int, duration: float) -> dict[str, float]:
    """One load-generator run against ``url`` (http://host:port: REST; grpc://host:port: gRPC)."""
    if url.startswith("grpc://"):
        argv = [sys.executable, "-m", "bench.agent.grpc_loadgen", "--target", url.removeprefix("grpc://"),
                "--client", CLIENTS["grpc"]]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "bench.agent.loadgen", "--url", url, "--client", CLIENTS["rest"]]
        argv += ["--binary"] if binary else []
    argv += ["--model", model, "--shape", ",".join(map(str, shape)), "--concurrency", str(concurrency), "--duration", str(duration)]
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
    parser.add_argument("--protocols", default="rest,grpc", help="rest, grpc or both (comma-separated)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat every point this often, interleaved")
    parser.add_argument("--no-best", action="store_true", help="skip the raw ORT best-throughput search")
    parser.add_argument("--floors", action="store_true",
                        help="also measure bare servers that answer at once (bench.agent.floor: REST and grpc.aio): "
                        "the load generators' own ceiling, in the same run")
    parser.add_argument("--rest-client", choices=("raw", "aiohttp"), default=CLIENTS["rest"])
    parser.add_argument("--grpc-client", choices=("sync", "aio"), default=CLIENTS["grpc"])
    args = parser.parse_args()
    CLIENTS.update(rest=args.rest_client, grpc=args.grpc_client)
    protocols = set(args.protocols.split(","))

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
            port, grpc_port = free_port(), free_port()
            agent_argv = [str(ROOT / ".venv" / "bin" / "edgemodel"), "agent", "--port", str(port),
                          *[f"--model={n}={paths[n]}" for n in names], *flags.split()]  # fmt: skip
            if "grpc" in protocols and not env:  # a --baseline tree may predate --grpc-port
                agent_argv += ["--grpc-port", str(grpc_port)]
            stack.enter_context(server(agent_argv, f"http://127.0.0.1:{port}/v2/health/ready", logs / f"agent-{index}.log", env))
            for name in names:
                if "rest" in protocols:
                    targets[name].append((label, f"http://127.0.0.1:{port}"))
                if "grpc" in protocols and not env:
                    targets[name].append((f"{label} (gRPC)", f"grpc://127.0.0.1:{grpc_port}"))
        if args.floors:
            http_floor = stack.enter_context(floor.bare_server("http"))
            grpc_floor = stack.enter_context(floor.bare_server("aio"))
            for name in names:
                if "rest" in protocols:
                    targets[name].append(("bare HTTP server (floor)", f"http://{http_floor}"))
                if "grpc" in protocols:
                    targets[name].append(("bare grpc.aio server (floor) (gRPC)", f"grpc://{grpc_floor}"))
        if args.kserve_python:
            for name in names:
                ks_port, ks_grpc = free_port(), free_port()
                ks_argv = [args.kserve_python, str(ROOT / "bench" / "agent" / "kserve_server.py"), "--model_path",
                           str(paths[name]), "--model_name", name, "--http_port", str(ks_port), "--grpc_port", str(ks_grpc)]  # fmt: skip
                stack.enter_context(server(ks_argv, f"http://127.0.0.1:{ks_port}/v2/health/ready", logs / f"kserve-{name}.log"))
                if "rest" in protocols:
                    targets[name].append(("KServe", f"http://127.0.0.1:{ks_port}"))
                if "grpc" in protocols:
                    targets[name].append(("KServe (gRPC)", f"grpc://127.0.0.1:{ks_grpc}"))
        # Interleaved: every point measures raw ORT and each server back to back, so that the load
        # of the shared machine drifts as little as possible between the numbers compared.
        for repeat in range(args.repeats):
            for name in names:
                shape = MODELS[name][1]
                for c in (int(x) for x in args.concurrency.split(",")):
                    r = raw_ort.run(str(paths[name]), "input", shape, c, len(os.sched_getaffinity(0)), 1, args.duration)
                    rows.append({"server": "raw ORT", "model": name, "body": "-", "repeat": repeat, **asdict(r)})
                    print(rows[-1], flush=True)
                    for binary in (False, True):
                        for label, url in targets[name]:
                            if url.startswith("grpc://") and binary:
                                continue  # gRPC has one body form (raw contents): measured once, under "raw"
                            result = load(url, name, shape, binary, c, args.duration)
                            body = "raw" if url.startswith("grpc://") else "binary" if binary else "json"
                            rows.append({"server": label, "model": name, "body": body, "repeat": repeat, **result})
                            print(rows[-1], flush=True)
        if not args.no_best:
            for name in names:
                best = raw_ort.best_throughput(str(paths[name]), "input", MODELS[name][1], args.duration / 2)
                rows.append({"server": "raw ORT best", "model": name, "body": "-", **asdict(best)})
                print(rows[-1], flush=True)

    load_after = load_average()
    table = render(rows, load_before, load_after, args) + "\n\n" + summary(rows)
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
        "| model | server | body | concurrency | repeat | p50 ms | p99 ms | throughput /s | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        conc = r["concurrency"]
        if r["server"] == "raw ORT best":
            conc = f"{r['concurrency']} x batch {r['batch']}, {r['intra_op_threads']} thr"
        errors = r.get("errors", "-")
        lines.append(f"| {r['model']} | {r['server']} | {r['body']} | {conc} | {r.get('repeat', 0)} | {r['p50_ms']} | {r['p99_ms']} "
                     f"| {r['throughput']} | {errors} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, object]]) -> str:
    """Per model, server, body and concurrency: medians over the repeats, p50 added over raw ORT, errors in total."""
    groups: dict[tuple[str, str, str, int], list[dict[str, object]]] = {}
    for r in rows:
        if r["server"] != "raw ORT best":
            groups.setdefault((str(r["model"]), str(r["server"]), str(r["body"]), int(str(r["concurrency"]))), []).append(r)

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    def p50s(group: list[dict[str, object]]) -> list[float]:
        return [float(str(r["p50_ms"])) for r in group]

    raw = {(m, c): (median(p50s(g)), min(p50s(g))) for (m, s, _, c), g in groups.items() if s == "raw ORT"}
    lines = [
        "Medians over the repeats; added = p50 minus raw ORT's p50 at the same concurrency. On a busy machine the",
        "best repeat (lowest p50, minus raw ORT's lowest) is the least disturbed estimate of the floor.",
        "",
        "| model | server | body | concurrency | repeats | p50 ms | added p50 ms | best added p50 ms | throughput /s | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, server_label, body, c), group in groups.items():
        p50, best = median(p50s(group)), min(p50s(group))
        raw_p50, raw_best = raw[(model, c)]
        added = "-" if server_label == "raw ORT" else f"{p50 - raw_p50:.3f}"
        best_added = "-" if server_label == "raw ORT" else f"{best - raw_best:.3f}"
        throughput = median([float(str(r["throughput"])) for r in group])
        errors = sum(int(str(r.get("errors", 0))) for r in group)
        lines.append(f"| {model} | {server_label} | {body} | {c} | {len(group)} | {p50:.3f} | {added} | {best_added} "
                     f"| {throughput:.0f} | {errors} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
