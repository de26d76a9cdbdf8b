"""Progress the operator can read while the Job runs: the latest step as JSON in the artifact store.

The conversion Job has no Kubernetes credentials, but it can write to the artifact store. Beside the
log lines, :class:`PublishedProgress` keeps the latest step (stage, step/total, detail such as
``student: epoch 12/30, loss 0.4123, accuracy 0.9521``) in ``{namespace}/{name}/{revision}.progress.json``
(outside the immutable revision folder). The operator reads it while the Job runs and puts it in the
EdgeModel's ``Converted`` condition. A background thread uploads the newest snapshot only, so a slow
or unreachable store never slows the conversion down; upload errors are logged, never raised.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemodel.convert.progress import LogProgress
from edgemodel.store.layout import RevisionRef

log = logging.getLogger(__name__)

PROGRESS_SUFFIX = ".progress.json"
MAX_DETAIL = 300
"""Characters of a step's detail that are published (the condition message stays short)."""
PUT_TIMEOUT_S = 5.0


def progress_key(ref: RevisionRef) -> str:
    """``{namespace}/{name}/{revision}.progress.json``: beside the revision folder, never inside it."""
    return f"{ref.namespace}/{ref.name}/{ref.revision}{PROGRESS_SUFFIX}"


def snapshot(
    index: int, title: str, done: int, total: int, detail: str, now: dt.datetime | None = None
) -> bytes:
    """The published JSON: stage number and title, step/total, the step's detail, the time (RFC 3339)."""
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {
            "stage": index,
            "title": title,
            "step": done,
            "total": total,
            "detail": detail[:MAX_DETAIL],
            "updatedAt": when,
        },
        sort_keys=True,
    ).encode()


def describe(doc: dict[str, Any]) -> str:
    """One line for a status message, e.g. ``stage 4 Training: distillation 12/30: student: epoch 12/30, ...``."""
    text = f"stage {doc.get('stage')} {doc.get('title', '')} {doc.get('step')}/{doc.get('total')}"
    detail = str(doc.get("detail") or "")
    return f"{text}: {detail}" if detail else text


class _Uploader:
    """One daemon thread that uploads the newest snapshot offered (older ones are dropped)."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self._put = put
        self._latest: bytes | None = None
        self._closed = False
        self._busy = False
        self._failed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="progress-upload", daemon=True)
        self._thread.start()

    def offer(self, data: bytes) -> None:
        with self._cond:
            self._latest = data
            self._cond.notify_all()

    def flush(self, timeout_s: float = PUT_TIMEOUT_S) -> bool:
        """Wait (at most ``timeout_s``) until the newest snapshot is uploaded; False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._latest is None and not self._busy, timeout_s)

    def close(self, timeout_s: float = PUT_TIMEOUT_S) -> None:
        """Upload what is pending (waiting at most ``timeout_s``) and stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                data, self._latest = self._latest, None
                if data is None:
                    return
                self._busy = True
            try:
                self._put(data)
            except Exception as exc:  # progress is best effort: the log has it too
                level = logging.DEBUG if self._failed else logging.WARNING
                self._failed = True
                log.log(
                    level,
                    "Could not publish the conversion progress to the store (%s); it is in this log",
                    exc,
                )
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class PublishedProgress(LogProgress):
    """LogProgress that also publishes every stage and step through ``put`` (JSON bytes), off the caller's thread."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        super().__init__()
        self._uploader = _Uploader(put)
        self.detail = ""

    def stage(self, title: str, total: int) -> None:
        super().stage(title, total)
        self.detail = ""
        self._publish()

    def advance(self, detail: str = "") -> None:
        super().advance(detail)
        self.detail = detail
        self._publish()

    def add_steps(self, count: int) -> None:
        super().add_steps(count)
        self._publish()

    def flush(self, timeout_s: float = PUT_TIMEOUT_S) -> bool:
        """Wait until the newest step is uploaded (or ``timeout_s`` passed); False on time-out."""
        return self._uploader.flush(timeout_s)

    def close(self) -> None:
        self._uploader.close()

    def _publish(self) -> None:
        self._uploader.offer(snapshot(self.index, self.title, self.done, self.total, self.detail))


def http_put(base_url: str, token: str, ref: RevisionRef) -> Callable[[bytes], None]:
    """A ``put`` for :class:`PublishedProgress` on the default HTTP store: one attempt, short timeout."""
    from edgemodel.store.client import HttpStore

    store = HttpStore(base_url, token, timeout_s=PUT_TIMEOUT_S, retries=0)
    key = progress_key(ref)

    def put(data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="edgemodel-progress-") as tmp:
            path = Path(tmp) / "progress.json"
            path.write_bytes(data)
            store.put_file(key, path)

    return put


def http_remove(base_url: str, token: str, ref: RevisionRef) -> Callable[[], None]:
    """Remove the published progress of a failed conversion (a failed Job leaves nothing in the store; a
    finished one leaves its last step beside the revision). Best effort: one attempt, short timeout, never raises."""
    from edgemodel.store.client import HttpStore, StoreError

    store = HttpStore(base_url, token, timeout_s=PUT_TIMEOUT_S, retries=0)
    key = progress_key(ref)

    def remove() -> None:
        try:
            store.delete(key)
        except (StoreError, OSError) as exc:
            log.debug("Could not remove the conversion progress %s: %s", key, exc)

    return remove
