"""gRPC load generator for Open Inference Protocol servers (the agent, KServe, Triton...).

``concurrency`` workers share one channel (one HTTP/2 connection, as tritonclient does); each
sends the same ModelInferRequest (FP32, ``raw_input_contents``), serialized once, back to back and
records its latency. Two clients: ``sync`` (default: blocking calls, one thread per worker, the
fastest grpcio client at low concurrency, as ``tritonclient.grpc``'s ``infer``) and ``aio`` (grpc.aio
on one event loop). Both send and receive raw bytes (no protobuf work in the client beyond checking
the status), so the client's own cost stays small. Same output as ``bench.agent.loadgen`` (one JSON line).

    .venv/bin/python -m bench.agent.grpc_loadgen --target 127.0.0.1:8081 --model digits --shape 1,1,8,8 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import asdict

import grpc
import numpy as np
from grpc import aio

from bench.agent.loadgen import LoadResult, drive, summarize
from edge_agent.grpc_proto import predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def build_request(model: str, input_name: str, shape: tuple[int, ...], seed: int = 0) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, id="1")
    request.inputs.add(name=input_name, datatype="FP32", shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request


async def _run_aio(target: str, body: bytes, concurrency: int, duration_s: float, warmup_s: float, max_requests: int) -> LoadResult:
    async with aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)

        async def send() -> bool:
            try:
                await call(body, timeout=60)
            except grpc.RpcError:
                return False
            return True

        return await drive(send, concurrency, duration_s, warmup_s, max_requests)


def _run_sync(target: str, body: bytes, concurrency: int, duration_s: float, warmup_s: float, max_requests: int) -> LoadResult:
    latencies: list[float] = []
    errors = [0]
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)

        def worker(until: float, record: bool) -> None:
            mine: list[float] = []
            failed = 0
            while time.perf_counter() < until and len(mine) < max_requests:
                start = time.perf_counter()
                try:
                    call(body, timeout=60)
                except grpc.RpcError:
                    failed += 1
                    continue
                mine.append(time.perf_counter() - start)
            if record:
                latencies.extend(mine)
                errors[0] += failed

        def phase(seconds: float, record: bool) -> float:
            started = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(started + seconds, record)) for _ in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - started

        phase(warmup_s, False)
        elapsed = phase(duration_s, True)
    return summarize(concurrency, latencies, errors[0], elapsed)


def run_load(
    target: str, request: pb.ModelInferRequest, concurrency: int, duration_s: float, warmup_s: float = 1.0,
    max_requests: int = 1_000_000, client: str = "sync",
) -> LoadResult:  # fmt: skip
    """Send ``request`` to ``target`` from ``concurrency`` workers for ``duration_s`` after a warm-up."""
    body = request.SerializeToString()
    if client == "aio":
        return asyncio.run(_run_aio(target, body, concurrency, duration_s, warmup_s, max_requests))
    if client == "sync":
        return _run_sync(target, body, concurrency, duration_s, warmup_s, max_requests)
    raise ValueError(f"--client {client!r}: use sync or aio")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="input", help="input tensor name")
    parser.add_argument("--shape", default="1,1,8,8", help="input shape, comma separated")
    parser.add_argument(
        "--binary", action="store_true", help="accepted for symmetry with loadgen (gRPC is always raw)"
    )
    parser.add_argument("--client", choices=("sync", "aio"), default="sync")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    request = build_request(args.model, args.input, tuple(int(d) for d in args.shape.split(",")))
    result = run_load(args.target, request, args.concurrency, args.duration, args.warmup, client=args.client)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
