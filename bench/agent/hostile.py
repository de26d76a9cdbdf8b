"""Worst-case cost of hostile requests to the agent: peak RSS growth and the stall other clients see.

Starts ``edgemodel agent`` (default limits unless ``--agent-flags``) serving the digits CNN and a
string-input model, then runs each attack from ``--attackers`` concurrent clients while a probe
client sends a small valid inference every 20 ms. Per attack it records the answers, the agent's
peak RSS growth (``VmHWM`` after resetting it through ``/proc/PID/clear_refs``, over every process
of the agent) and the slowest probe. Targets (issue 13): growth < 100 MB, slowest probe < 1 s.

    .venv/bin/python -m bench.agent.hostile --out bench/results/hostile.md

``--pythonpath DIR`` runs the agent from another source tree (e.g. ``git archive`` of an older
commit) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import onnx
from onnx import TensorProto, helper

from bench.agent.models import build
from edgemodel_dev.net import free_port
from edgemodel_dev.polling import http_ok, wait_until

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
Attack = tuple[bytes, dict[str, str]]


def strings_model(path: Path) -> Path:
    """Identity over a string tensor [-1]: the target of BYTES attacks."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["out"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["N"])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def binary(head: dict[str, object], blob: bytes) -> Attack:
    text = json.dumps(head).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"}


def json_body(data_text: bytes, name: str = "input", shape: str = "[1, 1, 8, 8]", datatype: str = "FP32") -> Attack:
    head = f'{{"inputs": [{{"name": "{name}", "shape": {shape}, "datatype": "{datatype}", "data": ['.encode()
    return head + data_text + b"]}]}", {"Content-Type": "application/json"}


def fill(unit: bytes, size: int) -> bytes:
    """``unit`` repeated (comma-separated) to about ``size`` bytes."""
    count = max(1, size // (len(unit) + 1))
    return b",".join([unit] * count)


def attacks(json_limit: int, body_limit: int) -> dict[str, Callable[[], Attack]]:
    strings = 64 * 1024  # max_elements / 64: the most BYTES elements the default limits accept
    return {
        "121-byte BYTES claim, shape [100000000]": lambda: binary(
            {"inputs": [{"name": "text", "shape": [100_000_000], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]},
            struct.pack("<I", 1) + b"a"),
        "BYTES binary at the element limit (inferred)": lambda: binary(
            {"inputs": [{"name": "text", "shape": [strings], "datatype": "BYTES", "parameters": {"binary_data_size": strings * 6}}]},
            (struct.pack("<I", 2) + b"ab") * strings),
        "JSON strings at the JSON limit": lambda: json_body(fill(b'"ab"', json_limit - 200), "text", "[3]", "BYTES"),
        "JSON floats at the JSON limit": lambda: json_body(fill(b"0.5", json_limit - 200)),
        "JSON arrays at the JSON limit": lambda: json_body(fill(b"[]", json_limit - 200)),
        "50 MB JSON body": lambda: json_body(fill(b"0.5", 50 * MiB)),
        "binary at the body limit": lambda: binary(
            {"inputs": [{"name": "input", "shape": [body_limit // 256, 1, 8, 8], "datatype": "FP32",
                         "parameters": {"binary_data_size": body_limit // 256 * 256}}]},
            bytes(body_limit // 256 * 256 - 1024)),  # fmt: skip
        "200 KB gzip bomb": lambda: (gzip.compress(b" " * (200 * MiB), 9), {"Content-Encoding": "gzip", "Content-Type": "application/json"}),
    }  # fmt: skip


def tree_pids(root: int) -> list[int]:
    pids, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return pids


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pids: list[int]) -> int:
    """Reset VmHWM of every process to its current RSS; the sum of those RSS in bytes."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return sum(status_kib(pid, "VmRSS") for pid in pids) * 1024


def peak(pids: list[int]) -> int:
    return sum(status_kib(pid, "VmHWM") for pid in pids) * 1024


class Probe:
    """A small valid inference every 20 ms from its own thread and event loop (the attackers' sending
    must not delay it); ``slowest`` is the longest answer time seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="probe", daemon=True)

    async def _run(self) -> None:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                async with session.post(f"{self.url}/v2/models/digits/infer", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                    await resp.read()
                    self.failures += resp.status != 200
                self.slowest = max(self.slowest, time.perf_counter() - started)
                await asyncio.sleep(0.02)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


async def run_attack(url: str, make: Callable[[], Attack], attackers: int, rounds: int, pid: int) -> dict[str, object]:
    body, headers = make()
    statuses: dict[str, int] = {}
    target = "strings" if b'"text"' in body[:300] or headers.get("Content-Encoding") else "digits"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def attacker() -> None:
            for _ in range(rounds):
                try:
                    async with session.post(f"{url}/v2/models/{target}/infer", data=body, headers=headers) as resp:
                        await resp.read()
                        key = str(resp.status)
                except aiohttp.ClientError as exc:  # the agent may close a connection after an early answer
                    key = type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1

        pids = tree_pids(pid)
        base = reset_peak(pids)
        with Probe(url) as probe:
            started = time.perf_counter()
            await asyncio.gather(*(attacker() for _ in range(attackers)))
            elapsed = time.perf_counter() - started
        growth = peak(pids) - base
    return {"statuses": statuses, "rss_growth_mb": growth / 1e6, "slowest_probe_ms": probe.slowest * 1e3,
            "probe_failures": probe.failures, "seconds": elapsed, "body_bytes": len(body)}  # fmt: skip


async def main_async(args: argparse.Namespace) -> list[dict[str, object]]:
    paths = build(args.models_dir)
    strings = strings_model(args.models_dir / "strings.onnx")
    port = free_port()
    env = dict(os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {}))
    argv = [str(ROOT / ".venv" / "bin" / "edgemodel"), "agent", "--port", str(port), f"--model=digits={paths['digits']}",
            f"--model=strings={strings}", *args.agent_flags.split()]  # fmt: skip
    log = (args.models_dir / "hostile-agent.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd="/", env=env)
    rows: list[dict[str, object]] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until("the agent to be ready", lambda: http_ok(f"{url}/v2/health/ready", timeout=1), 120, process=proc)
        for name, make in attacks(args.json_limit, args.body_limit).items():
            if args.only and args.only not in name:
                continue
            result = await run_attack(url, make, args.attackers, args.rounds, proc.pid)
            rows.append({"attack": name, **result})
            print(rows[-1], flush=True)
            if proc.poll() is not None:
                raise SystemExit(f"the agent died during {name!r} (exit {proc.returncode})")
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def render(rows: list[dict[str, object]], args: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        f"`{' '.join(args.argv)}`; {args.attackers} attackers x {args.rounds} requests per attack, a probe inference every "
        f"20 ms; load average before {load[0]}, after {load[1]} (shared machine). Targets: RSS growth < 100 MB, "
        "slowest probe < 1000 ms.",
        "",
        "| attack | body bytes | answers | peak RSS growth MB | slowest probe ms |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items(), key=str))  # type: ignore[attr-defined]
        lines.append(f"| {r['attack']} | {r['body_bytes']:,} | {answers} | {r['rss_growth_mb']:.1f} | {r['slowest_probe_ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/edgemodel-bench"))
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="requests per attacker and attack")
    parser.add_argument("--agent-flags", default="", help="extra flags for the agent (default: its default limits)")
    parser.add_argument("--json-limit", type=int, default=3 * MiB, help="the agent's --max-json-bytes (sizes the attacks)")
    parser.add_argument("--body-limit", type=int, default=8 * MiB, help="the agent's --max-body-bytes (sizes the attacks)")
    parser.add_argument("--pythonpath", help="run the agent from this source tree instead")
    parser.add_argument("--only", help="run only attacks whose name contains this")
    parser.add_argument("--out", type=Path, help="write the Markdown table here and the raw JSON beside it")
    args = parser.parse_args()
    args.argv = ["python -m bench.agent.hostile", *os.sys.argv[1:]]  # type: ignore[attr-defined]
    args.models_dir.mkdir(parents=True, exist_ok=True)
    before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = asyncio.run(main_async(args))
    after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = render(rows, args, (before, after))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"load": [before, after], "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
