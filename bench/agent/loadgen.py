"""Keep-alive HTTP/1.1 load generator for Open Inference Protocol v2 servers (the agent, KServe, ...).

``concurrency`` workers, one keep-alive connection each; each sends the same prepared request (JSON,
or Triton's binary tensor extension) back to back and records its latency. Two clients: ``raw``
(default: a minimal HTTP/1.1 client on uvloop, the cheapest here, so the numbers are the servers')
and ``aiohttp`` (aiohttp's client, as the earlier runs in docs/benchmarks.md).

    .venv/bin/python -m bench.agent.loadgen --url http://127.0.0.1:8080 --model digits \\
        --shape 1,1,8,8 --concurrency 8 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    throughput: float
    """Successful requests per second."""


def build_request(input_name: str, shape: tuple[int, ...], binary: bool, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one FP32 inference request."""
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    if not binary:
        body = {"id": "1", "inputs": [{"name": input_name, "shape": list(shape), "datatype": "FP32", "data": data.ravel().tolist()}]}
        return json.dumps(body).encode(), {"Content-Type": "application/json"}
    raw = data.tobytes()
    head = json.dumps({
        "id": "1",
        "inputs": [{"name": input_name, "shape": list(shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


async def drive(
    send: Callable[[], Awaitable[bool]], concurrency: int, duration_s: float, warmup_s: float, max_requests: int,
) -> LoadResult:  # fmt: skip
    """Call ``send`` (True: a good answer) from ``concurrency`` workers for ``duration_s`` after a warm-up;
    bounded in time and in count."""
    latencies: list[float] = []
    errors = 0

    async def worker(until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until and len(latencies) < max_requests:
            start = time.perf_counter()
            ok = await send()
            if record:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    await asyncio.gather(*(worker(time.perf_counter() + warmup_s, False) for _ in range(concurrency)))
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + duration_s, True) for _ in range(concurrency)))
    return summarize(concurrency, latencies, errors, time.perf_counter() - started)


def summarize(concurrency: int, latencies: list[float], errors: int, elapsed: float) -> LoadResult:
    """The result of a run: latencies in seconds of the good answers, errors counted."""
    values = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return LoadResult(
        concurrency=concurrency, requests=len(latencies), errors=errors, seconds=round(elapsed, 3),
        p50_ms=round(float(np.percentile(values, 50)), 3), p99_ms=round(float(np.percentile(values, 99)), 3),
        throughput=round(len(latencies) / elapsed, 1),
    )  # fmt: skip


async def run_load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float, warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
) -> LoadResult:
    """Send ``body`` to ``url`` from ``concurrency`` workers for ``duration_s`` after a warm-up."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def send() -> bool:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        return await drive(send, concurrency, duration_s, warmup_s, max_requests)


async def run_load_raw(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration_s: float, warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
) -> LoadResult:  # fmt: skip
    """As :func:`run_load` with a minimal HTTP/1.1 client: one keep-alive connection per worker, the request's
    bytes prepared once, the answer read by its Content-Length (no chunked answers: the servers measured
    here send none). The client's own cost is what aiohttp's client would add to every number."""
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    head = f"POST {split.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + "\r\n").encode("latin-1") + body
    free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send() -> bool:
        if free:
            reader, writer = free.pop()
        else:
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            status = int(answer[9:12])
            lower = answer.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise ValueError("an answer without Content-Length")
            length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
            await reader.readexactly(length)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return False
        free.append((reader, writer))
        return status == 200

    try:
        return await drive(send, concurrency, duration_s, warmup_s, max_requests)
    finally:
        for _, writer in free:
            writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="input", help="input tensor name")
    parser.add_argument("--shape", default="1,1,8,8", help="input shape, comma separated")
    parser.add_argument("--binary", action="store_true", help="use the binary tensor extension")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="raw: a minimal keep-alive HTTP/1.1 client on uvloop (the fastest here); aiohttp: aiohttp's client")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    body, headers = build_request(args.input, tuple(int(d) for d in args.shape.split(",")), args.binary)
    url = f"{args.url.rstrip('/')}/v2/models/{args.model}/infer"
    if args.client == "aiohttp":
        result = asyncio.run(run_load(url, body, headers, args.concurrency, args.duration, args.warmup))
    else:
        import uvloop

        result = uvloop.run(run_load_raw(url, body, headers, args.concurrency, args.duration, args.warmup))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
