"""Reading EdgeModel manifests from YAML files with errors that name the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgemodel.api import API_VERSION, EdgeModel
from edgemodel.errors import UserError, describe_validation_error


def load_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a file."""
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the path of an EdgeModel manifest with -f")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    for doc in docs:
        if not isinstance(doc, dict):
            raise UserError(f"{path}: every YAML document must be a mapping (an object), got {type(doc).__name__}")
    return docs


def parse_edgemodel(doc: dict[str, Any], origin: str = "manifest") -> EdgeModel:
    """Validate one EdgeModel object; raise UserError naming the field on failure."""
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "EdgeModel":
        raise UserError(
            f"{origin}: expected apiVersion {API_VERSION} and kind EdgeModel, "
            f"got {doc.get('apiVersion')!r} / {doc.get('kind')!r}"
        )
    try:
        return EdgeModel.model_validate({k: v for k, v in doc.items() if k != "status"})
    except ValidationError as exc:
        raise UserError(f"{origin}: invalid EdgeModel: {describe_validation_error(exc)}") from exc


def load_edgemodels(path: Path) -> list[EdgeModel]:
    """Every EdgeModel in a manifest file (other kinds are ignored)."""
    models = [parse_edgemodel(d, str(path)) for d in load_documents(path) if d.get("kind") == "EdgeModel"]
    if not models:
        raise UserError(f"{path}: holds no EdgeModel (kind: EdgeModel, apiVersion: {API_VERSION})")
    return models
