"""The limit: ``InferenceSession.run`` in-process, no HTTP, on the same input as the load generator.

Concurrency c = c threads calling ``run`` on one session back to back (ORT sessions are thread
safe). ``best_throughput`` searches intra-op threads x parallel callers x batch size and reports
the best images/s, the figure the agent must reach 90% of on ResNet-18.

    .venv/bin/python -m bench.agent.raw_ort --model /tmp/edgemodel-bench/digits.onnx --shape 1,1,8,8
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort


@dataclass
class RawResult:
    concurrency: int
    intra_op_threads: int
    batch: int
    requests: int
    p50_ms: float
    p99_ms: float
    throughput: float
    """Inferences (rows) per second."""


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def measure(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], concurrency: int, duration_s: float) -> tuple[list[float], float]:
    for _ in range(5):
        sess.run(None, feeds)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop_at:  # bounded in time
            start = time.perf_counter()
            sess.run(None, feeds)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started


def run(path: str, input_name: str, shape: tuple[int, ...], concurrency: int, threads: int, batch: int, duration_s: float) -> RawResult:
    data = np.random.default_rng(0).random((batch * shape[0], *shape[1:]), dtype=np.float32)
    latencies, elapsed = measure(session(path, threads), {input_name: data}, concurrency, duration_s)
    values = np.array(latencies) * 1e3
    return RawResult(
        concurrency=concurrency, intra_op_threads=threads, batch=batch, requests=len(latencies),
        p50_ms=round(float(np.percentile(values, 50)), 4), p99_ms=round(float(np.percentile(values, 99)), 4),
        throughput=round(len(latencies) * batch / elapsed, 1),
    )  # fmt: skip


def best_throughput(path: str, input_name: str, shape: tuple[int, ...], duration_s: float) -> RawResult:
    """The best rows/s over intra-op threads, parallel callers and batch sizes."""
    cpus = len(os.sched_getaffinity(0))
    results = [
        run(path, input_name, shape, callers, threads, batch, duration_s)
        for threads in sorted({1, cpus})
        for callers in sorted({1, cpus})
        for batch in (1, 8)
    ]
    return max(results, key=lambda r: r.throughput)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="input")
    parser.add_argument("--shape", default="1,1,8,8")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(","))
    for c in (1, 8, 32):
        print(json.dumps(asdict(run(args.model, args.input, shape, c, args.threads, 1, args.duration))))
    print(json.dumps({"best": asdict(best_throughput(args.model, args.input, shape, args.duration / 2))}))


if __name__ == "__main__":
    main()
