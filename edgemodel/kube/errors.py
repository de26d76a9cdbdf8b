"""The errors of the Kubernetes API client, and which of them are worth trying again."""

from __future__ import annotations

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Answers that say "later": too many requests, or the server (or etcd behind it) failing for now."""


class ApiError(Exception):
    """The API server answered with an error status; ``text`` is the whole one-line description."""

    def __init__(self, status: int, message: str, text: str, reason: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.message = message


class ApiUnavailable(Exception):
    """The API server could not be reached (connection refused, timeout, TLS failure...; after the retries)."""


def transient(exc: BaseException) -> bool:
    """Whether trying again may help: the server could not be reached, or answered 429 or 5xx."""
    return isinstance(exc, ApiUnavailable) or (isinstance(exc, ApiError) and exc.status in RETRYABLE_STATUS)
