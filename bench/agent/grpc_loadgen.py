"""grpc.aio load generator for Open Inference Protocol gRPC servers (the agent, KServe, Triton...).

``concurrency`` workers share one channel (one HTTP/2 connection, as tritonclient does); each
sends the same prepared ModelInferRequest (FP32, ``raw_input_contents``) back to back and records
its latency. Same output as ``bench.agent.loadgen`` (one JSON line).

    .venv/bin/python -m bench.agent.grpc_loadgen --target 127.0.0.1:8081 --model digits --shape 1,1,8,8 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

import grpc
import numpy as np
from grpc import aio

from bench.agent.loadgen import LoadResult, drive
from edge_agent.grpc_proto import predict_v2_pb2 as pb
from edge_agent.grpc_proto import predict_v2_pb2_grpc as pb_grpc


def build_request(model: str, input_name: str, shape: tuple[int, ...], seed: int = 0) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, id="1")
    request.inputs.add(name=input_name, datatype="FP32", shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request


async def run_load(
    target: str, request: pb.ModelInferRequest, concurrency: int, duration_s: float, warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
) -> LoadResult:  # fmt: skip
    """Send ``request`` to ``target`` from ``concurrency`` workers for ``duration_s`` after a warm-up."""
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def send() -> bool:
            try:
                await stub.ModelInfer(request, timeout=60)
            except grpc.RpcError:
                return False
            return True

        return await drive(send, concurrency, duration_s, warmup_s, max_requests)


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
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    request = build_request(args.model, args.input, tuple(int(d) for d in args.shape.split(",")))
    result = asyncio.run(run_load(args.target, request, args.concurrency, args.duration, args.warmup))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
