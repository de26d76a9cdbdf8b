"""The running conversion Job's latest progress step, read from the artifact store for the EdgeModel's status.

The Job publishes it (edgemodel.convert.published_progress) as ``{namespace}/{name}/{revision}.progress.json``;
this reads it with a short timeout and turns it into one line for the ``Converted`` condition, e.g.
``stage 4 Training: distillation 12/30: student: epoch 12/30, loss 0.4123, accuracy 0.9521``.
Anything missing, unreadable or malformed gives an empty string: progress is informative, never required.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from edgemodel.convert.published_progress import describe, progress_key
from edgemodel.store.layout import RevisionRef

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 3.0
MAX_BYTES = 4096


def parse(text: str) -> str:
    """The status line of a progress document, or '' when ``text`` is not one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return ""
    if not isinstance(doc, dict) or "title" not in doc:
        return ""
    return describe(doc)[:400]


def running_detail(job_message: str, progress: str) -> str:
    """The detail of the ``Converted`` condition while the Job runs: its Pods, then the progress if any."""
    return f"{job_message}; {progress}" if progress else job_message


async def read(session: Any, store_url: str, namespace: str, name: str, revision: int) -> str:
    """The progress line of a running conversion ('' when the Job has published none or the store fails)."""
    url = f"{store_url.rstrip('/')}/{progress_key(RevisionRef(namespace, name, revision))}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return ""
            return parse((await resp.content.read(MAX_BYTES)).decode("utf-8", "replace"))
    except (aiohttp.ClientError, TimeoutError, UnicodeError) as exc:
        log.debug("Could not read the conversion progress at %s: %s", url, exc)
        return ""
