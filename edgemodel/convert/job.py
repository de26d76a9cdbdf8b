"""The conversion Job: ``edgemodel convert --job`` as the operator runs it (contract in docs/architecture.md).

Input: env ``EDGEMODEL_OBJECT`` (the EdgeModel as JSON), ``--revision``, ``--store-url``,
``--signing-key``; optional ``EDGEMODEL_STORE_TOKEN`` and ``EDGEMODEL_TERMINATION_LOG``.
Output: the revision committed atomically to the store, and a ``ConversionResult`` as the
termination message (and as ``result.json`` beside ``manifest.json`` on success).
Exit 0 on success, 2 for bad input (retrying will not help), 1 when retrying may help.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgemodel.api import ConversionResult, EdgeModel
from edgemodel.api.base import API_VERSION
from edgemodel.convert.errors import ConversionError, Reason, first_line
from edgemodel.convert.pipeline import (
    ConversionOutput,
    ConvertOptions,
    convert,
    failure_result,
    success_result,
    termination_message,
)
from edgemodel.convert.progress import LogProgress, Progress
from edgemodel.convert.published_progress import PublishedProgress, http_put, http_remove
from edgemodel.errors import UserError, describe_validation_error
from edgemodel.store import RevisionExists, RevisionRef, RevisionStore, StoreError, open_store

log = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
CALIBRATION_FIELD = "spec.optimization.int8.calibrationDataUri"


def _mapping(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _explicit_static_without_calibration(doc: dict[str, Any]) -> bool:
    opt = _mapping(_mapping(doc, "spec"), "optimization")
    int8 = _mapping(opt, "int8")
    return (opt.get("mode") == "explicit" and int8.get("enabled", True) is not False
            and int8.get("method", "static") == "static" and not int8.get("calibrationDataUri"))


def parse_model(doc: dict[str, Any], origin: str) -> EdgeModel:
    """Validate an EdgeModel object; MissingCalibrationData / InvalidSpec with the field on failure."""
    if _explicit_static_without_calibration(doc):
        raise ConversionError(Reason.MISSING_CALIBRATION_DATA, f"{origin}: {CALIBRATION_FIELD}: explicit static INT8 "
                              "needs calibration data (an .npz of representative inputs); set it or use method: dynamic")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "EdgeModel":
        raise ConversionError(Reason.INVALID_SPEC, f"{origin}: expected apiVersion {API_VERSION} and kind EdgeModel, "
                              f"got {doc.get('apiVersion')!r} / {doc.get('kind')!r}")
    try:
        return EdgeModel.model_validate({k: v for k, v in doc.items() if k != "status"})
    except ValidationError as exc:
        raise ConversionError(Reason.INVALID_SPEC, f"{origin}: invalid EdgeModel: {describe_validation_error(exc)}") from exc


def model_from_env() -> EdgeModel:
    raw = os.environ.get("EDGEMODEL_OBJECT", "")
    if not raw:
        raise ConversionError(Reason.INVALID_SPEC, "EDGEMODEL_OBJECT is empty; the operator sets it to the EdgeModel as JSON")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConversionError(Reason.INVALID_SPEC, f"EDGEMODEL_OBJECT is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConversionError(Reason.INVALID_SPEC, "EDGEMODEL_OBJECT must be a JSON object (the EdgeModel)")
    return parse_model(doc, "EDGEMODEL_OBJECT")


def load_key(path: Path) -> Any:
    from edgemodel.signing import load_private_key

    try:
        return load_private_key(path)
    except UserError as exc:
        raise ConversionError(Reason.SIGNING_KEY_UNREADABLE, f"--signing-key: {exc}") from exc


def _store_error(exc: StoreError, what: str) -> ConversionError:
    return ConversionError(Reason.STORE_UNAVAILABLE, f"{what}: {exc}", retryable=exc.retryable)


def existing_result(store: RevisionStore, ref: RevisionRef) -> ConversionResult | None:
    """The result of an earlier attempt that already committed this revision, if any."""
    try:
        if not store.exists(ref.key("result.json")):
            return None
        return ConversionResult.model_validate_json(store.get_bytes(ref.key("result.json")))
    except StoreError as exc:
        raise _store_error(exc, "reading the existing revision") from exc
    except ValidationError:
        return None


def publish(output: ConversionOutput, store: RevisionStore, ref: RevisionRef,
            progress: Progress | None = None) -> ConversionResult:
    """Write result.json, upload the revision atomically and return its result."""
    names = [*output.files, "result.json"]
    uris = {name: store.url(ref.key(name)) for name in names}
    result = success_result(output, uris)
    result_path = output.directory / "result.json"
    result_path.write_text(json.dumps(result.to_k8s(), indent=2) + "\n")
    files = {**output.files, "result.json": result_path}
    if progress:
        progress.stage("Uploading to the artifact store", len(files))
    try:
        store.put_revision(ref, files, on_file=(lambda n: progress.advance(f"uploaded {n}")) if progress else None)
    except RevisionExists:
        earlier = existing_result(store, ref)
        if earlier is None or not earlier.ok:
            raise
        log.warning("Revision %s was already committed by an earlier attempt; reporting that result", ref.prefix)
        return earlier
    except StoreError as exc:
        raise _store_error(exc, f"uploading revision {ref.prefix}") from exc
    return result


def write_termination(result: ConversionResult, path: str) -> None:
    text = termination_message(result)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        log.warning("Could not write the termination message to %s (%s); it is on stdout", path, exc.strerror)
    print(text, flush=True)


def run_job(revision: int, store_url: str, signing_key: Path, options: ConvertOptions | None = None,
            progress: Progress | None = None) -> int:
    """Run the Job end to end; always writes a termination message; returns the exit code."""
    termination = os.environ.get("EDGEMODEL_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG
    try:
        result = _run(revision, store_url, signing_key, options, progress)
        code = 0
    except ConversionError as exc:
        log.error("Conversion failed: %s: %s", exc.reason.value, exc)
        result, code = failure_result(exc, revision), exc.exit_code
    except Exception as exc:  # anything unexpected is retryable and logged with its traceback
        log.error("Conversion failed unexpectedly:\n%s", traceback.format_exc())
        error = ConversionError(Reason.INTERNAL, f"unexpected error: {first_line(exc)}; see the Job's log")
        result, code = failure_result(error, revision), 1
    write_termination(result, termination)
    return code


def _run(revision: int, store_url: str, signing_key: Path, options: ConvertOptions | None,
         progress: Progress | None) -> ConversionResult:
    if revision < 1:
        raise ConversionError(Reason.INVALID_SPEC, f"--revision {revision}: use a positive integer")
    model = model_from_env()
    ref = RevisionRef(model.metadata.namespace or "default", str(model.metadata.name), revision)
    try:
        store = open_store(store_url, os.environ.get("EDGEMODEL_STORE_TOKEN", ""))
        store.health()
    except ValueError as exc:
        raise ConversionError(Reason.INVALID_SPEC, f"--store-url: {exc}") from exc
    except StoreError as exc:
        raise _store_error(exc, f"artifact store {store_url}") from exc
    earlier = existing_result(store, ref)
    if earlier is not None and earlier.ok:
        log.info("Revision %s is already in the store; reporting its result", ref.prefix)
        return earlier
    if progress is not None:
        return _convert(model, ref, store, signing_key, options, progress)
    if not store_url.startswith(("http://", "https://")):
        return _convert(model, ref, store, signing_key, options, LogProgress())
    # the operator reads this while the Job runs (edgemodel.convert.published_progress)
    published = PublishedProgress(http_put(store_url, os.environ.get("EDGEMODEL_STORE_TOKEN", ""), ref))
    try:
        return _convert(model, ref, store, signing_key, options, published)
    except BaseException:
        published.close()  # a failed conversion leaves nothing in the store, not even its progress
        http_remove(store_url, os.environ.get("EDGEMODEL_STORE_TOKEN", ""), ref)()
        raise
    finally:
        published.close()


def _convert(model: EdgeModel, ref: RevisionRef, store: RevisionStore, signing_key: Path,
             options: ConvertOptions | None, progress: Progress) -> ConversionResult:
    revision = ref.revision
    key = load_key(signing_key)
    log.info("Converting EdgeModel %s revision %d (generation %s)", f"{ref.namespace}/{ref.name}", revision,
             model.metadata.generation)
    with tempfile.TemporaryDirectory(prefix="edgemodel-convert-") as tmp:
        opts = options or ConvertOptions(workdir=Path(tmp))
        opts.workdir, opts.revision = Path(tmp) / "work", revision
        output = convert(model, key, opts, progress)
        result = publish(output, store, ref, progress)
    log.info("Converted EdgeModel %s revision %d: %s", f"{ref.namespace}/{ref.name}", revision, result.message)
    return result
