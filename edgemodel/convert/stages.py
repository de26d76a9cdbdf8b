"""spec.split.stages in the conversion Job: plan the cuts (auto), build and verify every stage, list the files.

The exported FP32 model is cut (as for a single split). Manual cuts are used as given; with none,
:func:`edgemodel.split.chain.plan_cuts` profiles every cut here and plans for the devices the operator
passes (``EDGEMODEL_PIPELINE_DEVICES``, :class:`edgemodel.split.chain_devices.PlanDevices`: the entry and
the stage nodes in pipeline order with their measured or labelled slowdowns, serving overheads and
memory). When it passes none (a speed unknown), the entry plus ``count - 1`` (or ``maxStages - 1``)
identical devices, each this machine x ``spec.split.edgeSlowdown``, with the operator's reason in the
log. Links = ``spec.split.link`` (empty RTT: 20 ms) and ``stages.links``. The devices used go into
chain.json (``plan.deviceSpecs``, ``plan.devicesFrom``); the stage files and chain.json join the
revision's signed ``files`` (one revision, one signature).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.api.edgemodel import DEFAULT_SPLIT_RTT_MS, Split
from edgemodel.errors import UserError
from edgemodel.split.chain import CHAIN_MANIFEST, build_chain, chain_costs, plan_cuts
from edgemodel.split.chain_devices import ENV as DEVICES_ENV
from edgemodel.split.chain_devices import PlanDevices
from edgemodel.split.chain_planner import ChainLinks, ChainObjective, Device
from edgemodel.split.planner import Link, PlanError

log = logging.getLogger(__name__)


def build_stages(
    split: Split,
    exported: Path,
    samples: Sequence[dict[str, np.ndarray]],
    workdir: Path,
    threads: int,
    step: Callable[[str], None],
    devices: PlanDevices | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Write the stages and chain.json into ``workdir``; (files to publish, summary). UserError names the field."""
    stages = split.stages
    if stages is None:
        raise UserError("spec.split.stages: not set")
    plan: dict[str, Any] | None = None
    cuts = list(stages.cuts)
    if not cuts:
        if split.link is None:
            raise UserError("spec.split.link: a pipeline needs the default link between stages")
        count = stages.fixed_count()
        chosen_devices, where = _devices(split, devices)
        log.info("Pipeline stages (objective %s): %s", stages.objective.value, where)  # the Job log says why
        step(where)
        rtt = DEFAULT_SPLIT_RTT_MS if split.link.rtt_ms is None else split.link.rtt_ms
        links = ChainLinks(Link(split.link.bandwidth_mbit_s, rtt), {
            (link.from_node, link.to_node): Link(link.bandwidth_mbit_s, rtt if link.rtt_ms is None else link.rtt_ms)
            for link in stages.links})
        try:
            chosen, profile = plan_cuts(
                exported,
                samples,
                list(chosen_devices.devices),
                links,
                ChainObjective(stages.objective.value),
                stages=count,
                max_stages=stages.max_stages,
                wire=split.wire,
                runs=5,
                threads=threads,
                allowed=chosen_devices.allowed(),
            )
        except PlanError as exc:
            raise UserError(f"spec.split.stages: {exc}") from exc
        # the costs go with the plan: the operator re-plans with each stage node's measured speed
        cuts, plan = chosen.cuts, {**chosen.to_dict(), "costs": chain_costs(profile, split.wire).to_dict(),
                                   "deviceSpecs": chosen_devices.specs(), "devicesFrom": chosen_devices.reason}
        step(f"planned {len(chosen.stages)} stages at {cuts}")
    result = build_chain(exported, samples, workdir, cuts, wire=split.wire, plan=plan, on_step=step)
    summary = {
        "stages": len(result.paths),
        "cuts": result.manifest["cuts"],
        "wire": result.manifest["wire"],
        "chosenBy": "auto" if plan else "manual",
        "manifest": CHAIN_MANIFEST,
        "maxAbsDiff": result.manifest["verification"]["fp32"]["maxAbsDiff"],
        "top1Agreement": result.manifest["verification"]["wire"]["top1Agreement"],
    }
    if plan:
        summary["devices"] = plan["devices"]
    return [*result.paths, result.manifest_path], summary


def _devices(split: Split, given: PlanDevices | None) -> tuple[PlanDevices, str]:
    """The devices to plan for and a log line saying which: the operator's nodes, else identical devices."""
    stages = split.stages
    assert stages is not None
    count = stages.fixed_count()
    if given is not None and given.known and (count is None or count <= len(given.devices)):
        names = ", ".join(f"{d.name} x{d.slowdown:g} ({s or '?'})" for d, s in
                          zip(given.devices, given.sources or [""] * len(given.devices), strict=True))
        return given, f"planning for the nodes {names}"
    why = (given.reason if given is not None and given.reason else
           f"no device list from the operator ({DEVICES_ENV} unset)")
    if given is not None and given.known:
        why = f"{count} stages but only {len(given.devices)} nodes known"
    n = count or stages.max_stages
    identical = PlanDevices(tuple(Device(f"stage-{k + 1}", split.edge_slowdown) for k in range(n)),
                            reason=f"identical devices (spec.split.edgeSlowdown {split.edge_slowdown:g}): {why}")
    return identical, f"planning for {n} {identical.reason}"
