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

from edgemodel.api import EdgeModelSpec
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
    """Rules neither the schema nor the CRD's CEL rules cover (the name; selector requirements).

    Rules on the spec's own fields are CROSS_FIELD_RULES in ``edgemodel.api`` (CEL in the CRD as well), so the
    API server, ``edgemodel validate`` and the operator apply them alike.
    """
    problems: list[str] = []
    if len(name) > NAME_MAX or not DNS_LABEL.match(name):
        problems.append(
            f"metadata.name: {name!r} must be a DNS label of at most {NAME_MAX} characters (lowercase letters, "
            "digits, '-'): it is the served model name and labels the conversion Job; rename the EdgeModel"
        )
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
