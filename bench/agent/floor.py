"""The floors: bare servers that answer at once, to measure what the load generators and the protocol stacks
cost on their own (``bench.agent.run --floors`` measures them beside the servers in the same run).

REST: a uvloop ``asyncio.Protocol`` that answers every request with a fixed small JSON body (no parsing
beyond finding the end of each request). gRPC, here the subject of ``main``:
No protobuf parsing, no work: a generic handler on ``/inference.GRPCInferenceService/ModelInfer`` with
raw-bytes (de)serializers, served by ``grpc.aio`` (``aio``: on uvloop, as the agent; ``aio-asyncio``: on
asyncio's own loop; ``agent-fixed``: the agent's own ``GrpcServer`` with a servicer that answers at once)
or by the sync ``grpc.server`` with a thread pool (``sync``; ``sync-hop``: the answer
comes from an event loop in another thread, as the agent's data plane would), and driven by the load generator's clients (``aio``: the
grpc.aio stub on one channel; ``sync``: blocking calls from one thread per worker on one channel).
Whatever a real server adds over raw ORT cannot be lower than this server's p50 with the same client.

    .venv/bin/python -m bench.agent.floor --concurrency 1,32 --duration 3 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from typing import Any, cast

from bench.agent.grpc_loadgen import build_request, run_load
from edgemodel_dev.net import free_port

ANSWER = b"\n\x06digits"
HTTP_ANSWER = b'{"model_name":"digits","outputs":[]}'


def _handler(grpc: Any, unary: Any) -> Any:
    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(unary)}
    )


def _serve(kind: str, port: int, ready: Any) -> None:
    import grpc
    from grpc import aio

    if kind in ("sync", "sync-hop"):
        server = grpc.server(ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        unary: Any = lambda request, context: ANSWER  # noqa: E731
        if kind == "sync-hop":  # the answer comes from an event loop in another thread, as the agent's data plane
            import threading

            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()

            async def on_loop(request: bytes) -> bytes:
                return ANSWER

            def unary(request: bytes, context: Any) -> bytes:
                return asyncio.run_coroutine_threadsafe(on_loop(request), loop).result()

        server.add_generic_rpc_handlers((_handler(grpc, unary),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        ready.set()
        server.wait_for_termination()
        return

    async def answer(request: bytes, context: Any) -> bytes:
        return ANSWER

    async def agent_fixed() -> None:
        """The agent's own GrpcServer (options, handlers, protobuf parsing) with a servicer that does no work."""
        from types import SimpleNamespace

        from edge_agent import grpc_server
        from edge_agent.grpc_proto import predict_v2_pb2 as pb

        response = pb.ModelInferResponse(model_name="digits")

        class Fixed(grpc_server.InferenceServicer):
            async def ModelInfer(self, request: Any, context: Any) -> Any:
                return response

        servicer = Fixed(cast(Any, None), cast(Any, SimpleNamespace(decode=None)))
        server = grpc_server.GrpcServer(servicer, "127.0.0.1", port, 1 << 20)
        await server.start()
        ready.set()
        await asyncio.Event().wait()

    async def main() -> None:
        if kind == "agent-fixed":
            await agent_fixed()
            return
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_handler(grpc, answer),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    if kind == "aio-asyncio":
        asyncio.run(main())
        return
    import uvloop

    uvloop.run(main())


class _BareHttp(asyncio.Protocol):
    """Answers each request (a head and a Content-Length body, keep-alive) with HTTP_ANSWER."""

    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(HTTP_ANSWER)
        + HTTP_ANSWER
    )

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            length = int(head[at + 17 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            buf = buf[end + 4 + length :]
            self.transport.write(self.answer)
        self.buf = buf


def _serve_http(port: int, ready: Any) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_BareHttp, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


@contextmanager
def bare_server(kind: str) -> Iterator[str]:
    """A bare server in a child process: ``http``, or gRPC ``aio``, ``aio-asyncio``, ``agent-fixed``, ``sync``, ``sync-hop``;
    yields its host:port."""
    port = free_port()
    spawn = multiprocessing.get_context("spawn")  # a forked child of a process that used grpcio has a broken grpcio
    ready = spawn.Event()
    target = _serve_http if kind == "http" else _serve
    args = (port, ready) if kind == "http" else (kind, port, ready)
    proc = spawn.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"the bare {kind} server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--servers", default="aio,sync")
    parser.add_argument("--clients", default="aio,sync")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    request = build_request("digits", "input", (1, 1, 8, 8))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with ExitStack() as stack:
        targets = {kind: stack.enter_context(bare_server(kind)) for kind in args.servers.split(",")}
        for repeat in range(args.repeats):  # interleaved: the machine's load drifts between repeats
            for kind, target in targets.items():
                for client in args.clients.split(","):
                    for c in (int(x) for x in args.concurrency.split(",")):
                        result = run_load(target, request, c, args.duration, warmup_s=0.5, client=client)
                        row = {"server": f"bare grpc {kind}", "client": client, "repeat": repeat, **asdict(result)}
                        print(json.dumps(row), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
