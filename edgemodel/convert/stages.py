"""spec.split.stages in the conversion Job: plan the cuts (auto), build and verify every stage, list the files.

The exported FP32 model is cut (as for a single split). Manual cuts are used as given; with none,
:func:`edgemodel.split.chain.plan_cuts` profiles every cut here and plans for the entry plus
``count - 1`` (or ``maxStages - 1``) pool devices, each predicted as this machine x
``spec.split.edgeSlowdown`` (the Job does not run on the devices; the operator's ``PipelinePlanCurrent``
check re-plans with what the stage nodes measure), links = ``spec.split.link`` (empty RTT: 20 ms).
The stage files and chain.json join the revision's signed ``files`` (one revision, one signature).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemodel.api.edgemodel import DEFAULT_SPLIT_RTT_MS, Split
from edgemodel.errors import UserError
from edgemodel.split.chain import CHAIN_MANIFEST, build_chain, chain_costs, plan_cuts
from edgemodel.split.chain_planner import ChainLinks, ChainObjective, Device
from edgemodel.split.planner import Link, PlanError


def build_stages(
    split: Split,
    exported: Path,
    samples: Sequence[dict[str, np.ndarray]],
    workdir: Path,
    threads: int,
    step: Callable[[str], None],
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
        devices = [Device(f"stage-{k + 1}", split.edge_slowdown) for k in range(count or stages.max_stages)]
        rtt = DEFAULT_SPLIT_RTT_MS if split.link.rtt_ms is None else split.link.rtt_ms
        try:
            chosen, profile = plan_cuts(
                exported,
                samples,
                devices,
                ChainLinks(Link(split.link.bandwidth_mbit_s, rtt)),
                ChainObjective(stages.objective.value),
                stages=count,
                max_stages=stages.max_stages,
                wire=split.wire,
                runs=5,
                threads=threads,
            )
        except PlanError as exc:
            raise UserError(f"spec.split.stages: {exc}") from exc
        # the costs go with the plan: the operator re-plans with each stage node's measured speed
        cuts, plan = chosen.cuts, {**chosen.to_dict(), "costs": chain_costs(profile, split.wire).to_dict()}
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
    return [*result.paths, result.manifest_path], summary
