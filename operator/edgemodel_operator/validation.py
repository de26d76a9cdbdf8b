"""Checks of an EdgeModel the CRD schema cannot express (or an API server may not enforce).

Every problem is one line naming the field and the fix. The operator writes them to the
``InvalidSpec`` condition and acts on nothing; the optional admission webhook refuses the
object with the same text. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from edgemodel.api import EdgeModelSpec, HardwareClass
from edgemodel.errors import describe_validation_error

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63


def parse_spec(body: Mapping[str, Any]) -> tuple[EdgeModelSpec | None, list[str]]:
    """The validated spec, or None and the problems found by the API models."""
    try:
        return EdgeModelSpec.model_validate(body.get("spec") or {}), []
    except ValidationError as exc:
        return None, describe_validation_error(exc, prefix="spec").split("; ")


def semantic_problems(name: str, spec: EdgeModelSpec) -> list[str]:
    """Rules between fields and list items that neither the schema nor CEL rules cover."""
    problems: list[str] = []
    if len(name) > NAME_MAX or not DNS_LABEL.match(name):
        problems.append(
            f"metadata.name: {name!r} must be a DNS label of at most {NAME_MAX} characters (lowercase letters, "
            "digits, '-'): it is the served model name and labels the conversion Job; rename the EdgeModel"
        )
    seen: dict[str, int] = {}
    for i, tensor in enumerate(spec.inputs):
        if tensor.name in seen:
            problems.append(f"spec.inputs[{i}].name: duplicate input name {tensor.name!r} (also spec.inputs"
                            f"[{seen[tensor.name]}]); give every input its ONNX input name")
        seen.setdefault(tensor.name, i)
        for j, dim in enumerate(tensor.shape):
            if dim == 0 or dim < -1:
                problems.append(f"spec.inputs[{i}].shape[{j}]: {dim} is not a dimension; use a positive size "
                                "or -1 for a dynamic one")
    classes = [t.hardware_class for t in spec.optimization.targets]
    for cls in {c for c in classes if classes.count(c) > 1}:
        problems.append(f"spec.optimization.targets: hardwareClass {cls.value} is listed twice; list each class once")
    if spec.hardware.require_gpu and HardwareClass.GPU not in classes:
        problems.append("spec.optimization.targets: hardware.requireGpu selects only GPU nodes but no gpu artifact "
                        "is built; add {hardwareClass: gpu}")
    for i, req in enumerate(spec.selector.match_expressions):
        where = f"spec.selector.matchExpressions[{i}].values"
        if req.operator in ("In", "NotIn") and not req.values:
            problems.append(f"{where}: operator {req.operator} needs at least one value")
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            problems.append(f"{where}: operator {req.operator} takes no values; remove them")
    return problems


def problems(body: Mapping[str, Any]) -> tuple[EdgeModelSpec | None, list[str]]:
    """The parsed spec (None when unusable) and every problem, each naming its field and fix."""
    name = str((body.get("metadata") or {}).get("name") or "")
    spec, found = parse_spec(body)
    if spec is None:
        return None, found
    found = semantic_problems(name, spec)
    return (spec if not found else None), found


def message(found: list[str]) -> str:
    """One message for the condition, the Event and the webhook's denial."""
    return "; ".join(found)
