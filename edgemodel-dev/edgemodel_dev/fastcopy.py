"""``deepcopy`` for JSON documents (dicts, lists, strings, numbers, booleans, None), several times
faster than ``copy.deepcopy``: the emulator copies every object it stores and serves, and at
10,000 nodes renewing Leases that copying was most of its time. Anything else falls back to
``copy.deepcopy``.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

T = TypeVar("T")
_ATOMS = (str, int, float, bool, type(None))


def _clone(value: Any) -> Any:
    cls = type(value)
    if cls is dict:
        return {k: v if type(v) in _ATOMS else _clone(v) for k, v in value.items()}
    if cls is list:
        return [v if type(v) in _ATOMS else _clone(v) for v in value]
    if cls in _ATOMS:
        return value
    return copy.deepcopy(value)


def deepcopy(value: T) -> T:
    """A deep copy of a JSON-like value."""
    return _clone(value)  # type: ignore[no-any-return,unused-ignore]
