"""Pipeline stages in the agent: a tail entry with ``split.nextUrl`` forwards its output to the next stage.

A pipeline (``spec.split.stages``, docs/split-inference.md "Pipelines") is served with the roles the
agent already has: the entry is a ``head`` (stage 1, the whole model for the fallback, ``cloudUrl`` =
stage 2), the last stage a ``tail``, and every middle stage a ``tail`` whose ``split.nextUrl`` names
the next stage (``edgemodel_pipeline_*`` metrics with ``stage`` = its input tensor). :func:`served` wraps such a tail in an
:class:`edgemodel.split.stages.ForwardingStage` before it is registered in the tail server, which
then runs the stage, forwards the features (codec, mTLS with the agent's ``--split-tls-*``) and
answers with what comes back (503 when the rest of the chain cannot answer: the entry falls back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from edge_agent.split import TailPart
from edgemodel.api import ModelAssignment
from edgemodel.split.codec import WireFormat
from edgemodel.split.remote import PartRunner, RemoteTail, TlsFiles
from edgemodel.split.stages import ForwardingStage, PipelineMetrics

if TYPE_CHECKING:
    from edge_agent.control.reconciler import Reconciler

log = logging.getLogger(__name__)

_forwarding: dict[tuple[int, str, str, int], ForwardingStage] = {}
"""Forwarding stages by (owner id, namespace, name, revision); the owner is the agent's reconciler."""
_closing: set[asyncio.Task[None]] = set()
_metrics: dict[int, PipelineMetrics] = {}
"""The edgemodel_pipeline_* families, once per agent metrics registry."""


def metrics_of(owner: Reconciler) -> PipelineMetrics:
    """The pipeline metrics in the agent's registry (served on its /metrics), created on first use."""
    registry = owner.server.metrics.registry
    found = _metrics.get(id(registry))
    if found is None:
        found = _metrics[id(registry)] = PipelineMetrics(registry)
    return found


def served(part: TailPart, a: ModelAssignment, tls: TlsFiles | None, owner: Reconciler) -> PartRunner:
    """What the tail server should run for ``a``: the tail itself, or a stage forwarding to ``split.nextUrl``."""
    if a.split is None or not a.split.next_url:
        return part
    if not a.split.next_cut:
        raise ValueError(
            f"spec.models[{a.name}@{a.revision}].split.nextCut: needed with nextUrl (the next stage's "
            "input tensor); the operator must set it"
        )
    remote = RemoteTail(
        a.split.next_url,
        a.name,
        str(a.revision),
        a.split.next_cut,
        wire=WireFormat.parse(a.split.wire),
        tls=tls,
        cooldown_s=1.0,
    )
    stage = ForwardingStage(
        part, remote, model=a.name, version=str(a.revision), index=a.split.cut, metrics=metrics_of(owner)
    )  # the stage label: its input tensor
    release(owner, a.namespace, a.name, a.revision)
    _forwarding[(id(owner), a.namespace, a.name, a.revision)] = stage
    log.info(
        "Stage of %s/%s revision %d forwards to %s (input %s)",
        a.namespace,
        a.name,
        a.revision,
        a.split.next_url,
        a.split.next_cut,
    )
    return stage


def release(owner: object, namespace: str, name: str, revision: int) -> None:
    """Close the connection to the next stage of an unassigned (or replaced) stage, if it had one."""
    stage = _forwarding.pop((id(owner), namespace, name, revision), None)
    if stage is None:
        return
    try:
        task = asyncio.get_running_loop().create_task(stage.close())
    except RuntimeError:  # no loop (shutdown): the session goes with the process
        return
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def close_all(owner: object) -> None:
    """Close every forwarding stage of ``owner`` (the agent shuts down)."""
    stages = [_forwarding.pop(key) for key in [k for k in _forwarding if k[0] == id(owner)]]
    for stage in stages:
        await stage.close()
