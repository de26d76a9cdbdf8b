"""The subset of Kubernetes JSONPath that printer columns use.

``.status.phase``, ``.spec.items[0].name``, ``.metadata.labels['app.kubernetes.io/name']``,
``.items[*].name`` and filters like ``.status.conditions[?(@.type=="Ready")].status``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_TOKEN = re.compile(
    r"""\.\.?(?P<name>[A-Za-z0-9_\-$/]+)        # .name
      | \[\s*'(?P<quoted>[^']*)'\s*\]          # ['name']
      | \[\s*"(?P<dquoted>[^"]*)"\s*\]         # ["name"]
      | \[\s*(?P<index>-?\d+)\s*\]             # [0]
      | \[\s*\*\s*\]                           # [*]
      | \[\s*\?\(\s*@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\s*\)\s*\]
      | \.\*                                   # .*
    """,
    re.VERBOSE,
)


@functools.cache
def _compile(path: str) -> list[tuple[str, Any]]:
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.startswith("$"):
        text = text[1:]
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if match.group("name") is not None:
            steps.append(("key", match.group("name")))
        elif match.group("quoted") is not None:
            steps.append(("key", match.group("quoted")))
        elif match.group("dquoted") is not None:
            steps.append(("key", match.group("dquoted")))
        elif match.group("index") is not None:
            steps.append(("index", int(match.group("index"))))
        elif match.group("fpath") is not None:
            value = match.group("fval").strip("\"'")
            steps.append(("filter", (match.group("fpath"), match.group("fop"), value)))
        else:
            steps.append(("all", None))
        pos = match.end()
    return steps


def _get(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def find(obj: Any, path: str) -> list[Any]:
    """All values the path selects (empty when nothing matches)."""
    current = [obj]
    for kind, arg in _compile(path):
        nxt: list[Any] = []
        for value in current:
            if kind == "key" and isinstance(value, dict) and arg in value or kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value):
                nxt.append(value[arg])
            elif kind == "all":
                nxt.extend(value if isinstance(value, list) else value.values() if isinstance(value, dict) else [])
            elif kind == "filter" and isinstance(value, list):
                fpath, op, expected = arg
                for item in value:
                    actual = _get(item, fpath)
                    shown = str(actual).lower() if isinstance(actual, bool) else str(actual)
                    if (shown == expected) == (op == "=="):
                        nxt.append(item)
        current = nxt
    return current
