"""Typed errors of the data plane; the REST layer maps each to an HTTP status in one place.

Every message names the problem and, where it helps, the fix: a client sees it verbatim in
``{"error": "..."}``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of errors a client can see; ``status`` is the HTTP status the REST layer returns."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AgentError):
    """The request is malformed or does not match the model (wrong name, shape, datatype...)."""

    status = 400


class Unauthorized(AgentError):
    """Missing or wrong bearer token."""

    status = 401


class ModelNotFound(AgentError):
    """No model (or version) of that name is loaded."""

    status = 404


class RequestTimeout(AgentError):
    """The client stopped sending the request body."""

    status = 408


class PayloadTooLarge(AgentError):
    """The body exceeds the configured limit."""

    status = 413


class UnsupportedMediaType(AgentError):
    """A Content-Encoding the agent does not decode."""

    status = 415


class ModelNotReady(AgentError):
    """The model is assigned but not loaded yet (or is being unloaded); retry later."""

    status = 503


class SplitUnavailableError(AgentError):
    """A split model cannot answer: the cloud tail failed and the fallback policy allows no local answer."""

    status = 503


class InferenceFailed(AgentError):
    """ONNX Runtime failed on valid input: a server-side fault, logged with the model name."""

    status = 500


class LoadError(Exception):
    """A model could not be loaded; ``reason`` is the CamelCase reason reported in status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
