"""The devices a conversion Job plans a pipeline's auto cuts for (stdlib only).

The operator knows the nodes a chain will run on (the entries and the stage pool, in pipeline order)
and what they measured; it passes them to the Job as JSON in ``EDGEMODEL_PIPELINE_DEVICES``
(:meth:`PlanDevices.to_json`). An empty device list means the speeds are not all known: the Job plans
for identical devices (``spec.split.edgeSlowdown``) and logs ``reason``. The list and its sources are
written to chain.json (``plan.deviceSpecs``), so the plan can be reproduced from chain.json alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgemodel.split.chain_planner import Device
from edgemodel.split.planner import PlanError

ENV = "EDGEMODEL_PIPELINE_DEVICES"
MEASURED, LABELLED = "measured", "label"
"""Where a device's slowdown came from: a chain that served on the node, or its edgemodel.io/edge-slowdown label."""


def device_to_dict(device: Device, source: str = "") -> dict[str, Any]:
    """One device as chain.json and the Job's env keep it."""
    out: dict[str, Any] = {"name": device.name, "slowdown": round(device.slowdown, 4),
                           "overheadMs": round(device.overhead_ms, 4), "memoryBytes": device.memory_bytes}
    if source:
        out["source"] = source
    return out


def device_from_dict(doc: Mapping[str, Any]) -> Device:
    """A device from :func:`device_to_dict`; :class:`PlanError` naming the field when malformed."""
    try:
        memory = doc.get("memoryBytes")
        return Device(str(doc["name"]), float(doc["slowdown"]), int(memory) if memory else None,
                      float(doc.get("overheadMs") or 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{ENV}: device {dict(doc)} is malformed ({exc}); needs name and slowdown") from exc


@dataclass(frozen=True)
class PlanDevices:
    """The ordered devices to plan for (``devices[0]`` is the entry), or none and why."""

    devices: tuple[Device, ...] = ()
    sources: tuple[str, ...] = ()
    """Per device: :data:`MEASURED` or :data:`LABELLED`."""
    pinned: bool = False
    """stageSelectors: stage ``k + 1`` may only run on ``devices[k]`` (no device skipped)."""
    reason: str = ""
    """Why these devices, or why none (the Job then plans for identical devices)."""

    @property
    def known(self) -> bool:
        return len(self.devices) >= 2

    def allowed(self) -> list[frozenset[str] | None] | None:
        """The planner's per-stage restriction (stageSelectors), or None."""
        return [None, *(frozenset({d.name}) for d in self.devices[1:])] if self.pinned else None

    def specs(self) -> list[dict[str, Any]]:
        return [device_to_dict(d, s) for d, s in zip(self.devices, self.sources or [""] * len(self.devices),
                                                     strict=True)]

    def to_json(self) -> str:
        return json.dumps({"devices": self.specs(), "pinned": self.pinned, "reason": self.reason},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> PlanDevices:
        """Parse :meth:`to_json`; :class:`PlanError` naming the variable when malformed."""
        try:
            doc = json.loads(raw)
            specs: Sequence[Mapping[str, Any]] = doc.get("devices") or []
            devices = tuple(device_from_dict(d) for d in specs)
            return cls(devices, tuple(str(d.get("source") or "") for d in specs), bool(doc.get("pinned")),
                       str(doc.get("reason") or ""))
        except (AttributeError, TypeError, ValueError) as exc:
            raise PlanError(f"{ENV}: not the JSON the operator writes ({exc})") from exc


def parse_slowdown(raw: str | None) -> float | None:
    """A positive finite number from a label value; None when absent or not one."""
    return _label_number(raw, zero_allowed=False)


def parse_overhead_ms(raw: str | None) -> float:
    """A non-negative finite number of milliseconds from a label value; 0 when absent or not one."""
    return _label_number(raw, zero_allowed=True) or 0.0


def _label_number(raw: str | None, zero_allowed: bool) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        return None
    return value
