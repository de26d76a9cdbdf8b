"""Label and field selectors in the syntax of the Kubernetes API query parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgemodel_dev.errors import bad_request

JSON = dict[str, Any]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One term: ``key op values`` where op is =, !=, in, notin, exists or !exists."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present  # "!exists"


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return [t for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; raises 400 on bad syntax."""
    if not text:
        return []
    result = []
    for term in _split_terms(text):
        eq = _EQ_RE.match(term)
        if eq:
            op = "=" if eq.group(2) == "==" else eq.group(2)
            result.append(Requirement(eq.group(1), op, (eq.group(3),)))
            continue
        st = _SET_RE.match(term)
        if not st:
            raise bad_request(f"unable to parse requirement: {term.strip()!r} in labelSelector {text!r}")
        negated, key, op, values = st.groups()
        if op:
            if negated:
                raise bad_request(f"unable to parse requirement: {term.strip()!r} in labelSelector {text!r}")
            vals = tuple(v.strip() for v in values.split(",") if v.strip())
            result.append(Requirement(key, op, vals))
        else:
            result.append(Requirement(key, "!exists" if negated else "exists"))
    return result


def selector_from_label_selector(selector: JSON | None) -> list[Requirement]:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) as requirements."""
    if not selector:
        return []
    reqs = [Requirement(k, "=", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
    return reqs


def labels_match(reqs: list[Requirement], obj: JSON) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True)
class FieldTerm:
    path: str
    negate: bool
    value: str


def parse_field_selector(text: str | None) -> list[FieldTerm]:
    """Parse ``metadata.name=x,spec.nodeName!=y``: any dotted path of the object is accepted."""
    if not text:
        return []
    result = []
    for term in _split_terms(text):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise bad_request(f"invalid selector: {term.strip()!r} in fieldSelector {text!r}")
        result.append(FieldTerm(match.group(1), match.group(2) == "!=", match.group(3)))
    return result


def field_value(obj: JSON, path: str) -> str:
    """The value of a dotted path as a field selector compares it ("" when absent)."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def fields_match(terms: list[FieldTerm], obj: JSON) -> bool:
    return all((field_value(obj, t.path) == t.value) != t.negate for t in terms)
