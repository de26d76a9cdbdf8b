"""The edge side of the split benchmark: profile every head here, then time every option over each link.

Started by run.py as its own process, inside a CPU-quota cgroup that emulates a weaker edge
device. For each link (a shaping proxy in front of the cloud process) it times edge-only (the
whole model here), cloud-only (the raw FP32 input sent) and a split at every candidate cut, one
request at a time, and reads the bytes that crossed the proxy from its stats file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.split.codec import WireFormat
from edgemodel.split.graph import find_cut_candidates, load_model, split_model
from edgemodel.split.profile import host_info, profile_split
from edgemodel.split.remote import FallbackPolicy, RemoteTail, TlsFiles, run_split
from edgemodel.split.runtime import OrtPart
from edgemodel_dev.polling import wait_until

log = logging.getLogger("bench.split.edge")


def identity(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    return dict(feeds)


def read_stats(path: Path, closed_at_least: int, timeout_s: float = 30.0) -> dict[str, int]:
    """The proxy's counters once it has seen ``closed_at_least`` connections close (bounded wait)."""
    def stats() -> dict[str, int] | None:
        found: dict[str, int] = json.loads(path.read_text())
        return found if found["closed"] >= closed_at_least else None

    return wait_until(f"proxy stats {path} showing {closed_at_least} closed connections", stats, timeout_s,
                      interval=0.02, explain=lambda: f"last: {path.read_text()}")


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1e3 for x in latencies)
    return {"n": len(ms), "medianMs": statistics.median(ms), "minMs": ms[0], "maxMs": ms[-1], "allMs": ms}


class RemoteOption:
    """One remote option (a cut, or cloud-only) on one link: its own client and its per-request wire bytes."""

    def __init__(self, link: dict[str, Any], name: str, cut: str, head: Any, wire: WireFormat,
                 tls: TlsFiles | None) -> None:
        self.link, self.name, self.cut, self.head, self.wire, self.tls = link, name, cut, head, wire, tls
        self.stats_file = Path(link["statsFile"])
        self.remote: RemoteTail | None = None
        self.outcomes: list[Any] = []

    def client(self) -> RemoteTail:
        return RemoteTail(self.link["url"], self.name, "1", self.cut, wire=self.wire, tls=self.tls,
                          timeout_s=300, cooldown_s=0)

    async def wire_bytes(self, inputs: dict[str, np.ndarray]) -> tuple[float, float]:
        """Bytes one request puts on the wire: (connection with 2 requests) - (connection with 1 request)."""
        before = read_stats(self.stats_file, 0)
        async with self.client() as one:
            await run_split(self.head, one, None, FallbackPolicy.FAIL, inputs)
        single = read_stats(self.stats_file, before["closed"] + 1)
        async with self.client() as two:
            for _ in range(2):
                await run_split(self.head, two, None, FallbackPolicy.FAIL, inputs)
        double = read_stats(self.stats_file, single["closed"] + 1)
        up = (double["up"] - single["up"]) - (single["up"] - before["up"])
        down = (double["down"] - single["down"]) - (single["down"] - before["down"])
        return float(up), float(down)

    async def open(self, inputs: dict[str, np.ndarray]) -> None:
        self.remote = self.client()
        await run_split(self.head, self.remote, None, FallbackPolicy.FAIL, inputs)  # handshake + warm-up

    async def once(self, inputs: dict[str, np.ndarray]) -> float:
        assert self.remote is not None
        start = time.perf_counter()
        self.outcomes.append(await run_split(self.head, self.remote, None, FallbackPolicy.FAIL, inputs))
        return time.perf_counter() - start

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()


async def sweep_link(link: dict[str, Any], args: argparse.Namespace, full: OrtPart, heads: dict[str, OrtPart],
                     inputs: dict[str, np.ndarray], wire: WireFormat, tls: TlsFiles | None) -> dict[str, Any]:
    """Every option on one link, timed round-robin (one request per option per round)."""
    label = f"{link['mbit']:g} Mbit/s, RTT {link['rttMs']:g} ms"
    remotes = {f"cut:{cut}": RemoteOption(link, args.name, cut, head.run, wire, tls) for cut, head in heads.items()}
    remotes["cloud-only"] = RemoteOption(link, args.name, args.input_name, identity,
                                         WireFormat.parse(args.input_wire), tls)
    wire_bytes = {}
    for number, (name, option) in enumerate(remotes.items(), start=1):
        wire_bytes[name] = await option.wire_bytes(inputs)
        log.info("[%s] bytes %d/%d %s: %.0f up, %.0f down", label, number, len(remotes), name, *wire_bytes[name])
    async with RemoteTail(link["url"], args.name, "1", args.input_name, tls=tls) as pinger:
        measured_rtt_ms = await pinger.ping(count=9) * 1e3
    log.info("[%s] measured RTT (HTTPS health round trip): %.1f ms", label, measured_rtt_ms)
    latencies: dict[str, list[float]] = {"edge-only": [], **{name: [] for name in remotes}}
    full.run(inputs)
    for option in remotes.values():
        await option.open(inputs)
    rounds, done = 3, 0
    try:
        while done < rounds:
            round_start = time.perf_counter()
            start = time.perf_counter()
            full.run(inputs)
            latencies["edge-only"].append(time.perf_counter() - start)
            for name, option in remotes.items():
                latencies[name].append(await option.once(inputs))
            done += 1
            if done == 1:
                rounds = int(min(args.max_rounds, max(3, args.seconds_per_link // (time.perf_counter() - round_start))))
            log.info("[%s] round %d/%d: edge-only %.1f ms, cloud-only %.1f ms", label, done, rounds,
                     latencies["edge-only"][-1] * 1e3, latencies["cloud-only"][-1] * 1e3)
    finally:
        for option in remotes.values():
            await option.close()
    options: dict[str, Any] = {"edge-only": {**summary(latencies["edge-only"]), "wireBytesUp": 0, "wireBytesDown": 0}}
    for name, option in remotes.items():
        outcomes = option.outcomes
        options[name] = {**summary(latencies[name]),
                         "wireBytesUp": wire_bytes[name][0], "wireBytesDown": wire_bytes[name][1],
                         "payloadBytesUp": outcomes[-1].bytes_up, "payloadBytesDown": outcomes[-1].bytes_down,
                         "headMs": statistics.median(o.head_s for o in outcomes) * 1e3,
                         "encodeMs": statistics.median(o.encode_s for o in outcomes) * 1e3,
                         "transferMs": statistics.median(o.transfer_s for o in outcomes) * 1e3,
                         "tailMs": statistics.median(o.tail_s for o in outcomes) * 1e3}
    return {"mbit": link["mbit"], "rttMs": link["rttMs"], "measuredRttMs": measured_rtt_ms, "rounds": done,
            "options": options, "loadAverage": host_info()["loadAverage"]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model)
    inputs = {args.input_name: np.load(args.input)}
    profile = profile_split(model, inputs, threads=args.threads, runs=args.runs, warmup=2)
    profile.save(args.profile_out)
    full = OrtPart(model.SerializeToString(), threads=args.threads)
    cuts = find_cut_candidates(model)
    heads = {c.tensor: OrtPart(split_model(model, c).head.SerializeToString(), threads=args.threads) for c in cuts}
    tls = None
    if args.tls_dir:
        tls = TlsFiles(args.tls_dir / "ca.pem", args.tls_dir / "client.pem", args.tls_dir / "client.key")
    wire = WireFormat.parse(args.wire)
    links: list[dict[str, Any]] = json.loads(args.links)
    results: dict[str, Any] = {"host": host_info(), "wire": str(wire), "links": []}
    for link in links:
        results["links"].append(await sweep_link(link, args, full, heads, inputs, wire, tls))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--input", type=Path, required=True, help=".npy timing input")
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--links", required=True, help='JSON list of {"mbit", "rttMs", "url", "statsFile"}')
    parser.add_argument("--wire", default="int8", help="feature wire format, e.g. int8, int8+zstd, fp16, fp32")
    parser.add_argument("--input-wire", default="fp32", help="wire format of the raw input for cloud-only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seconds-per-link", type=float, default=150.0, help="time budget of the timed rounds")
    parser.add_argument("--max-rounds", type=int, default=12)
    parser.add_argument("--tls-dir", type=Path)
    parser.add_argument("--profile-out", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge %(levelname)s %(message)s")
    results = asyncio.run(run(args))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
