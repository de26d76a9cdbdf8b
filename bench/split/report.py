"""Write bench/results/split.md from bench/split/results/*.json (``python bench/split/report.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _kb(n: float) -> str:
    return f"{n / 1000:,.1f}"


def _cut_table(r: dict[str, Any]) -> list[str]:
    edge = {c["tensor"]: c for c in r["edgeProfile"]["cuts"]}
    cloud = {c["tensor"]: c for c in r["cloudProfile"]["cuts"]}
    acc = r["accuracy"]
    labelled = "unsplitAccuracy" in acc
    drop_head = "acc. drop INT8 / INT8+zstd (pp)" if labelled else "top-1 disagreement INT8 / INT8+zstd (pp)"
    lines = ["| # | cut tensor | shape | FP32 kB | FP16 kB | INT8 kB | INT8+zstd kB | FP32/INT8 | FP32/INT8+zstd "
             f"| edge head ms | cloud tail ms | {drop_head} |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tensor, c in edge.items():
        b = c["featureBytes"]
        a = acc["cuts"][tensor]
        if labelled:
            drops = [100 * (acc["unsplitAccuracy"] - a[w]["accuracy"]) for w in ("int8", "int8+zstd")]
        else:
            drops = [100 * (1 - a[w]["agreement"]) for w in ("int8", "int8+zstd")]
        lines.append(
            f"| {c['index']} | `{tensor}` | {'x'.join(map(str, c['shape']))} | {_kb(b['fp32'])} | {_kb(b['fp16'])} "
            f"| {_kb(b['int8'])} | {_kb(b['int8+zstd'])} | {b['fp32'] / b['int8']:.3f} "
            f"| {b['fp32'] / b['int8+zstd']:.2f} | {c['headMs']:.2f} | {cloud[tensor]['tailMs']:.2f} "
            f"| {drops[0]:.2f} / {drops[1]:.2f} |")
    return lines


def _ms(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def _link_tables(r: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    summaries = []
    declared_plans = r.get("plansDeclaredRtt", r["plans"])
    for link, plan, declared in zip(r["measured"]["links"], r["plans"], declared_plans, strict=True):
        options = link["options"]
        predicted = {o["option"]: o for o in plan["options"]}
        predicted_declared = {o["option"]: o for o in declared["options"]}
        best = min(options, key=lambda k: options[k]["medianMs"])
        auto = plan["chosen"]["option"]
        auto_declared = declared["chosen"]["option"]
        summaries.append({
            "mbit": link["mbit"], "rttMs": link["rttMs"], "measuredRttMs": link.get("measuredRttMs", link["rttMs"]),
            "auto": auto, "autoMs": options[auto]["medianMs"], "best": best, "bestMs": options[best]["medianMs"],
            "ratio": options[auto]["medianMs"] / options[best]["medianMs"],
            "autoDeclared": auto_declared, "autoDeclaredMs": options[auto_declared]["medianMs"],
            "ratioDeclared": options[auto_declared]["medianMs"] / options[best]["medianMs"]})
        lines += ["", f"**{link['mbit']:g} Mbit/s, RTT {link['rttMs']:g} ms** (measured HTTPS round trip "
                  f"{_ms(link.get('measuredRttMs', link['rttMs']))} ms; load average after this link: "
                  f"{', '.join(f'{x:.2f}' for x in link.get('loadAverage', []))})", "",
                  "| option | predicted ms (measured RTT / declared RTT) | measured median ms (min-max, n) "
                  "| on the wire up kB | down kB | head ms | transfer ms | tail ms | |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, m in options.items():
            marks = (("**auto**", name == auto), ("auto (declared RTT)", name == auto_declared and name != auto),
                     ("best", name == best))
            mark = ", ".join(x for x, ok in marks if ok)
            stages = (f"{_ms(m['headMs'])} | {_ms(m['transferMs'])} | {_ms(m['tailMs'])}"
                      if "headMs" in m else "- | - | -")
            lines.append(f"| {name} | {_ms(predicted[name]['totalMs'])} / {_ms(predicted_declared[name]['totalMs'])} "
                         f"| {_ms(m['medianMs'])} ({_ms(m['minMs'])}-{_ms(m['maxMs'])}, {m['n']}) "
                         f"| {_kb(m['wireBytesUp'])} | {_kb(m['wireBytesDown'])} | {stages} | {mark} |")
    return lines, summaries


def model_section(r: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    s = r["settings"]
    acc = r["accuracy"]
    title = f"{r['model']}, edge = {s['edgeCpu']:g} core"
    lines = [f"## {title}", "", f"{r['note']}.", "",
             f"- command: `{r['command']}`",
             f"- measured {r['started']['time']} - {r['finished']['time']}; load average (1/5/15 min) at start "
             f"{', '.join(f'{x:.2f}' for x in r['started']['loadAverage'])}, at the end "
             f"{', '.join(f'{x:.2f}' for x in r['finished']['loadAverage'])} (2 cores shared with other engineers)",
             f"- edge: 1 ORT thread in a cgroup limited to {s['edgeCpu']:g} of a core; cloud: {s['cloudThreads']} "
             f"ORT thread{'s' if s['cloudThreads'] > 1 else ''}, unthrottled; whole model: edge {r['edgeProfile']['fullMs']:.2f} ms, cloud "
             f"{r['cloudProfile']['fullMs']:.2f} ms (profile medians)",
             f"- features travel as `{s['wire']}` in the latency sweep; cloud-only sends the raw input as "
             f"`{s['inputWire']}` ({_kb(r['edgeProfile']['inputBytes'][s['inputWire']])} kB); "
             f"{'HTTPS with mTLS' if s['tls'] else 'plain HTTP'} through the shaping proxy",
             "", "### Cuts: feature sizes (encoded, with headers), profiles, accuracy", ""]
    if "unsplitAccuracy" in acc:
        lines += [f"Unsplit accuracy on {acc['samples']} test images: {100 * acc['unsplitAccuracy']:.2f} %. "
                  f"Accuracy drop = unsplit minus split, in percentage points.", ""]
    else:
        lines += [f"Disagreement = share of {acc['samples']} random images whose top-1 class differs from the "
                  f"unsplit model's, in percentage points.", ""]
    lines += _cut_table(r)
    tables, summaries = _link_tables(r)
    lines += ["", "### End-to-end latency per option and link", "",
              "`predicted` is the planner's cost from the two profiles and the declared link; `measured` is the "
              "wall time of one request (head, encode, HTTPS through the proxy, tail, decode); bytes are what "
              "crossed the proxy per request (TLS records + HTTP + body; the one-off handshake excluded).", *tables]
    ratios_int8 = [r["edgeProfile"]["cuts"][i]["featureBytes"]["fp32"] / r["edgeProfile"]["cuts"][i]["featureBytes"]["int8"]
                   for i in range(len(r["edgeProfile"]["cuts"]))]
    ratios_zstd = [c["featureBytes"]["fp32"] / c["featureBytes"]["int8+zstd"] for c in r["edgeProfile"]["cuts"]]
    if "unsplitAccuracy" in acc:
        drops = {w: max(100 * (acc["unsplitAccuracy"] - a[w]["accuracy"]) for a in acc["cuts"].values())
                 for w in ("int8", "int8+zstd")}
    else:
        drops = {w: max(100 * (1 - a[w]["agreement"]) for a in acc["cuts"].values()) for w in ("int8", "int8+zstd")}
    summary = {"model": title, "links": summaries, "int8Ratio": (min(ratios_int8), max(ratios_int8)),
               "zstdRatio": (min(ratios_zstd), max(ratios_zstd)), "drops": drops}
    return lines, summary


def write_report(results_dir: Path, out: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    results.sort(key=lambda r: (r["model"] != "resnet18", -r["settings"]["edgeCpu"]))
    sections = []
    summaries = []
    for r in results:
        lines, summary = model_section(r)
        sections += ["", *lines]
        summaries.append(summary)
    head = ["# Split inference benchmark (edge-cloud, Neurosurgeon-style cut choice)", "",
            "Generated by `bench/split/report.py` from `bench/split/results/*.json` (written by "
            "`bench/split/run.py`). How it runs: edge and cloud are separate processes on this machine; the "
            "link is emulated by `edgemodel.split.shaping` (an asyncio proxy: per-direction rate, RTT/2 each way) "
            "because the kernel has no `netem` qdisc; the weaker edge device is emulated with a cgroup-v1 CPU "
            "quota. Latencies are medians of single requests (batch 1) timed round-robin over all options (one request "
            "per option per round), so load changes on the shared machine hit every option alike; profiles are "
            "interleaved the same way.", "",
            "## Summary against the targets", "",
            "`auto` is the planner's choice with the RTT the edge measured (an HTTPS health round trip through "
            "the link, as the agent would measure it); `auto (declared)` uses the link's nominal 20 ms.", "",
            "| model | link | measured RTT ms | auto | its measured ms | best measured option | its ms | auto / best "
            "| auto (declared RTT) | auto (declared) / best |",
            "|---|---|---:|---|---:|---|---:|---:|---|---:|"]
    for s in summaries:
        for link in s["links"]:
            def verdict(ratio: float) -> str:
                return f"{ratio:.3f} ({'ok' if ratio <= 1.10 else 'MISSED'})"
            head.append(f"| {s['model']} | {link['mbit']:g} Mbit/s, {link['rttMs']:g} ms "
                        f"| {_ms(link['measuredRttMs'])} | {link['auto']} | {_ms(link['autoMs'])} | {link['best']} "
                        f"| {_ms(link['bestMs'])} | {verdict(link['ratio'])} | {link['autoDeclared']} "
                        f"| {verdict(link['ratioDeclared'])} |")
    head += ["", "| model | FP32/INT8 bytes (no zstd) | FP32/INT8+zstd bytes | worst INT8 drop (pp) "
             "| worst INT8+zstd drop (pp) |", "|---|---:|---:|---:|---:|"]
    for s in summaries:
        head.append(f"| {s['model']} | {s['int8Ratio'][0]:.3f}-{s['int8Ratio'][1]:.3f} "
                    f"| {s['zstdRatio'][0]:.2f}-{s['zstdRatio'][1]:.2f} | {s['drops']['int8']:.2f} "
                    f"| {s['drops']['int8+zstd']:.2f} |")
    head += ["", "Targets: auto cut within 10 % of the best measured option; INT8 features at least 4x smaller "
             "than FP32 with at most 0.5 pp accuracy drop. INT8 without zstd is 4x minus the message header "
             "(`codec.message_overhead`: 8 bytes + 16 + name + 4 per dimension + 5), so it is *just under* 4x "
             "by construction; with zstd it is above 4x wherever the features have the zeros of a ReLU."]
    head += ["", "Reproduce: `.venv/bin/python bench/split/run.py` (both models, edge 0.25 core, 1/10/100 Mbit/s, about "
             "15 min), `.venv/bin/python bench/split/run.py --models resnet18 --edge-cpu 0.1 --mbit 1,10,100,1000` "
             "(about 16 min), then `.venv/bin/python bench/split/report.py`. Needs root for the cgroup "
             "(`--edge-cpu 1` runs the edge unthrottled).", "",
             "Caveats, honestly:", "",
             "- The CFS quota emulates the edge's *average* speed. A head shorter than the quota left in the current "
             "10 ms period runs at full speed after idle: ResNet-18's `max_pool2d` head profiles at ~10 ms "
             "back-to-back but takes ~2 ms in flight. Only the smallest heads are affected.",
             "- The proxy models rate and delay, not loss, TCP slow start or back-pressure; the endpoints' TCP runs "
             "over loopback. The planner likewise assumes a warm connection.",
             "- Both cores are shared with other engineers' jobs; load averages are given per run and per link.",
             "- With a 0.25-core edge the cloud (1 core) is only ~4x faster: edge-only wins at 1 and 10 Mbit/s and "
             "a split after the stem (`max_pool2d`, 201 kB of INT8 instead of 603 kB of FP32 input) at 100 Mbit/s. "
             "The 0.1-core edge adds the cloud-only regime at 1000 Mbit/s. At 10 Mbit/s with that edge, five "
             "options lie within ~5 % of each other: the choice there is a near-tie.",
             "- The edge-only latency measured in flight (78-88 ms at 0.25 core) is below the back-to-back profile "
             "(96 ms): the quota refills while the edge waits for the network between rounds (same cause as the "
             "first caveat); the planner's edge-only estimate is therefore conservative.",
             "- An earlier run (cloud with 2 ORT threads, profiles taken cut after cut) missed the target at "
             "100 Mbit/s (auto 1.30x the best): under other jobs' load the tails ran 4-6x slower in flight than "
             "profiled. Interleaved (round-robin) profiling and sweeps and a 1-thread cloud fixed the agreement; "
             "those are the numbers here.",
             "- ResNet-18 has random weights: its 'accuracy' is top-1 agreement with the unsplit model on 64 random "
             "images. The digits CNN is real accuracy on 360 held-out images. Neither drops with INT8 features; "
             "FP32/INT8 is 3.99-4.00x for ResNet-18's large tensors without zstd (2.7-3.9x for digits' tiny ones, "
             "where the header dominates), 3.9-9.1x with zstd."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head + sections) + "\n")


if __name__ == "__main__":
    write_report(HERE / "results", ROOT / "bench" / "results" / "split.md")
    sys.exit(0)
