"""bench/results/pipeline.json -> bench/results/pipeline.md (a table per part of the benchmark).

.venv/bin/python bench/pipeline/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def row(name: str, r: dict[str, Any], predicted: bool = True) -> str:
    pred = f"{r['predictedLatencyMs']:.0f} | {r['predictedThroughputRps']:.2f}" if predicted else "- | -"
    return (
        f"| {name} | {r['latencyMedianMs']:.0f} | {r['throughputRps']:.2f} | {pred} | {r['requests']} "
        f"| {r['errors']} |"
    )


def render(data: dict[str, Any]) -> str:
    s = data["settings"]
    cpus = ", ".join(f"{k} {v:g}" for k, v in data["cpus"].items())
    lines = [
        "# Pipeline benchmark (ResNet-18, 3 stage processes)",
        "",
        f"Command: `flock /work/bench.lock nice -n 10 .venv/bin/python bench/pipeline/run.py --seconds {s['seconds']:g} "
        f"--alternatives {s['alternatives']}` then `.venv/bin/python bench/pipeline/report.py`.",
        f"Devices (cores, cgroup v1 quota): {cpus}; the entry receives every request. Links {s['mbit']:g} Mbit/s, "
        f"{s['rtt_ms']:g} ms RTT (shaping proxies between stages), {s['wire']} features, mTLS on every hop; "
        f"closed loop with {s['concurrency']} requests in flight for {s['seconds']:g} s per plan; latency = median "
        "of 10 requests one at a time. Objective: " + s["objective"] + ".",
        f"Reference profile (unthrottled, 1 thread, this machine at the time): whole model "
        f"{data['referenceFullMs']:.1f} ms; {data['cuts']} candidate cuts. Measured slowdowns: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in data["slowdown"].items())
        + "."
        + (" Serving overhead per request (a trivial model, same request): "
           + ", ".join(f"{k} {v:.1f} ms" for k, v in data["overheadMs"].items()) + "; the planner adds it to every "
           "stage and the slowdowns exclude it." if data.get("overheadMs") else ""),
        "",
        load_note(data),
        "",
        "| plan (devices@cuts) | latency ms | throughput req/s | predicted latency ms | predicted req/s | requests "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in data["singleNode"].items():
        lines.append(row(f"single node: {name} ({data['cpus'][name]:g} core)", r, predicted=False))
    for i, r in enumerate(data["plans"]):
        lines.append(row(("**planner's choice** " if i == 0 else "") + r["plan"], r))
    f = data["fault"]
    m = data["summary"]
    lines += [
        "",
        f"Planner's choice: {m['chosenPlan']}; best measured: {m['bestMeasuredPlan']} "
        f"(chosen / best = {m['chosenVsBestMeasured']:.2f}).",
        f"Throughput vs the best single node {m['throughputVsBestSingle']:.2f}x, vs the entry alone "
        f"{m['throughputVsEntryAlone']:.2f}x; latency: entry alone / chosen {m['latencyEntryAloneOverChosen']:.2f}x, "
        f"best single / chosen {m['latencyBestSingleOverChosen']:.2f}x.",
        "",
        f"Stage stopped under load (the last stage SIGKILLed {f['killedAfterS']:.1f} s into {f['seconds']:.1f} s): "
        f"{f['requests']} answered, **{f['errors']} errors**; first answer after the kill "
        f"{f['firstAnswerAfterKillS']:.2f} s, longest gap between answers afterwards "
        f"{f['longestGapAfterKillS']:.2f} s; entry paths {f['entryPaths']} (local = the whole model on the entry).",
        "",
    ]
    return "\n".join(lines)


def load_note(data: dict[str, Any]) -> str:
    """The machine's load during the run (1/5/15-minute load averages, 2 shared cores)."""
    load = data.get("loadAverage")
    if not load:
        return ("**Taken on a shared, heavily loaded 2-core machine** (no load average recorded): predictions and "
                "the 1:2:4 device ratio hold only roughly.")
    fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    singles = sum(r["throughputRps"] for r in data["singleNode"].values())
    return (f"Load average (1/5/15 min, 2 shared cores) {fmt(load['start'])} at the start, {fmt(load['end'])} at "
            f"the end. The single nodes together answer {singles:.1f} req/s: the capacity no plan can pass.")


def main() -> int:
    data = json.loads((ROOT / "bench" / "results" / "pipeline.json").read_text())
    out = ROOT / "bench" / "results" / "pipeline.md"
    out.write_text(render(data))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
