"""User-facing errors: one clear line that names the field and the fix, never a traceback."""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """A mistake the user can fix (bad input, missing file); the CLI prints it as one line."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _loc(loc: tuple[int | str, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``spec.rollout.steps: the last step must be 100 ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling (see `kubectl explain`)"
        if err["type"] == "missing":
            message = "required field is missing"
        where = _loc(loc, prefix)
        if message.startswith("spec.") and ": " in message:
            where, message = message.split(": ", 1)
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)
