"""The FederatedTraining object a server or client process gets (JSON in ``EDGEMODEL_FEDERATED_OBJECT``), and the
termination message it leaves for the operator."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgemodel.api.federated import FederatedTraining
from edgemodel.federated.errors import FederatedError, Reason

log = logging.getLogger(__name__)

OBJECT_ENV = "EDGEMODEL_FEDERATED_OBJECT"
TERMINATION_ENV = "EDGEMODEL_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_BYTES = 4096


def load_object(text: str | None = None) -> FederatedTraining:
    """Parse and validate the object; errors name the field."""
    raw = text if text is not None else os.environ.get(OBJECT_ENV, "")
    if not raw:
        raise FederatedError(
            Reason.INVALID_SPEC, f"{OBJECT_ENV} is empty: set it to the FederatedTraining as JSON"
        )
    try:
        return FederatedTraining.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise FederatedError(Reason.INVALID_SPEC, f"{OBJECT_ENV} is not JSON ({exc})") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise FederatedError(Reason.INVALID_SPEC, f"invalid FederatedTraining: {problems}") from exc


def object_json(obj: FederatedTraining) -> str:
    return json.dumps(
        obj.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"}),
        separators=(",", ":"),
        sort_keys=True,
    )


def write_termination(message: dict[str, Any]) -> None:
    """The compact JSON result the operator reads from the container's termination message (at most 4 KiB)."""
    text = json.dumps(message, separators=(",", ":"))[:MAX_TERMINATION_BYTES]
    path = os.environ.get(TERMINATION_ENV) or DEFAULT_TERMINATION_LOG
    print(text, flush=True)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        log.warning("Could not write the termination message to %s (%s); it is on stdout", path, exc.strerror)
