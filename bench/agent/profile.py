"""Where the agent's time per request goes at concurrency 1: cProfile of its event-loop thread.

The agent runs in this process on uvloop (as ``edgemodel agent`` does) with cProfile timing the
event-loop thread's own CPU time (``time.thread_time``: on a shared machine, wall time would
count the moments the thread waits for a core); the load generator (``bench.agent.loadgen``, or
``bench.agent.grpc_loadgen`` with ``--grpc``) runs in its own process. Prints the functions by
own CPU time (totals over the requests), and the thread's CPU per request; ``--cpu-only``
measures that CPU without the profiler's overhead (steadier than latency on a busy machine).

    .venv/bin/python -m bench.agent.profile --model /tmp/edgemodel-bench/digits.onnx --shape 1,1,8,8
    .venv/bin/python -m bench.agent.profile --model /tmp/edgemodel-bench/digits.onnx --shape 1,1,8,8 --grpc
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.server import AgentServer
from edge_agent.settings import AgentSettings, LocalModel


async def profile(args: argparse.Namespace) -> None:
    settings = AgentSettings(port=0, grpc_port=0 if args.grpc else None)
    server = AgentServer(settings)
    await server.start()
    await server.load_local([LocalModel("model", "1", args.model)])
    server.dataplane.started = True
    if args.grpc:
        argv = ["-m", "bench.agent.grpc_loadgen", "--target", server.grpc_target]
    else:
        argv = ["-m", "bench.agent.loadgen", "--url", server.url]
    argv += [
        "--model",
        "model",
        "--shape",
        args.shape,
        "--concurrency",
        "1",
        "--duration",
        str(args.duration),
    ]
    argv += ["--binary"] if args.binary else []
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=subprocess.PIPE)
    await asyncio.sleep(1.0)  # the load generator's warm-up
    profiler = cProfile.Profile(time.thread_time)
    cpu_start = time.thread_time()
    if not args.cpu_only:
        profiler.enable()
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=args.duration + 120)
    profiler.disable()
    cpu = time.thread_time() - cpu_start
    await server.stop()
    result = json.loads(out.decode().strip().splitlines()[-1])
    requests = max(1, result["requests"])
    print(json.dumps(result))
    note = "" if args.cpu_only else " (profiled, so inflated)"
    print(f"event-loop thread CPU: {cpu / requests * 1e6:.1f} us per request{note}")
    if args.cpu_only:
        return
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(args.top)
    print(f"(times below are totals over {requests} requests)")
    print(stream.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--shape", default="1,1,8,8")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--binary", action="store_true", help="REST: the binary tensor extension")
    parser.add_argument("--grpc", action="store_true", help="profile the gRPC path instead of REST")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--cpu-only", action="store_true", help="no profiler: only the loop thread's CPU per request"
    )
    args = parser.parse_args()
    import uvloop

    uvloop.run(profile(args))


if __name__ == "__main__":
    main()
