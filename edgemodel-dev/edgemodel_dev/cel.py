"""A small CEL interpreter for CRD ``x-kubernetes-validations`` rules.

Covers what validation rules usually need: literals, ``self``/``oldSelf``, field and index access,
``has()``, ``! && || ?:``, comparisons, ``in``, arithmetic, ``size``/``contains``/``startsWith``/
``endsWith``/``matches``, ``isSorted`` (Kubernetes' list library), ``type()``, type conversions and the ``all``/``exists``/``exists_one``/``map``/
``filter`` macros, with CEL's error-absorbing ``&&``/``||``. A rule using anything else raises
:class:`Unsupported` and is skipped (logged), never guessed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

Node = tuple[Any, ...]


class Unsupported(Exception):
    """The expression uses CEL the interpreter does not implement."""


class EvalError(Exception):
    """A runtime error (no such key, bad types): the rule fails, as in Kubernetes."""


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<float>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>\d+)(?P<uint>[uU])?
  | (?P<str>[rR]?'(?:[^'\\]|\\.)*'|[rR]?"(?:[^"\\]|\\.)*")
  | (?P<op>\|\||&&|==|!=|<=|>=|[-+*/%!<>?:.,()\[\]{}])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise Unsupported(f"cannot read {text[pos:pos + 10]!r}")
        pos = match.end()
        kind = match.lastgroup
        value = match.group(0)
        if kind == "ws":
            continue
        if kind in ("int", "uint"):
            out.append(("num", int(match.group("int"))))
        elif kind == "float":
            out.append(("num", float(value)))
        elif kind == "str":
            raw = value[0] in "rR"
            body = value[2:-1] if raw else value[1:-1]
            out.append(("str", body if raw else bytes(body, "utf-8").decode("unicode_escape")))
        elif kind == "ident" and value in ("true", "false", "null"):
            out.append(("lit", {"true": True, "false": False, "null": None}[value]))
        elif kind == "ident" and value == "in":
            out.append(("op", "in"))
        else:
            out.append(("op" if kind == "op" else "ident", value))
    out.append(("end", None))
    return out


class _Parser:
    BINARY = [("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%")]

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.pos]

    def take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.toks[self.pos]
        if value is not None and tok[1] != value:
            raise Unsupported(f"expected {value!r}, found {tok[1]!r}")
        self.pos += 1
        return tok

    def parse(self) -> Node:
        node = self.ternary()
        if self.peek()[0] != "end":
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return node

    def ternary(self) -> Node:
        cond = self.binary(0)
        if self.peek() == ("op", "?"):
            self.take()
            yes = self.ternary()
            self.take(":")
            return ("?", cond, yes, self.ternary())
        return cond

    def binary(self, level: int) -> Node:
        if level == len(self.BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in self.BINARY[level]:
            op = self.take()[1]
            left = (op, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        if self.peek() in (("op", "!"), ("op", "-")):
            op = self.take()[1]
            return ("not" if op == "!" else "neg", self.unary())
        return self.member()

    def args(self) -> list[Node]:
        self.take("(")
        items: list[Node] = []
        while self.peek() != ("op", ")"):
            items.append(self.ternary())
            if self.peek() == ("op", ","):
                self.take()
        self.take(")")
        return items

    def member(self) -> Node:
        node = self.primary()
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.take()
                name = self.take()[1]
                if self.peek() == ("op", "("):
                    node = ("call", name, node, self.args())
                else:
                    node = ("field", node, name)
            elif tok == ("op", "["):
                self.take()
                index = self.ternary()
                self.take("]")
                node = ("index", node, index)
            else:
                return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind in ("num", "str", "lit"):
            return ("const", value)
        if kind == "ident":
            if self.peek() == ("op", "("):
                return ("call", value, None, self.args())
            return ("var", value)
        if value == "(":
            node = self.ternary()
            self.take(")")
            return node
        if value == "[":
            items: list[Node] = []
            while self.peek() != ("op", "]"):
                items.append(self.ternary())
                if self.peek() == ("op", ","):
                    self.take()
            self.take("]")
            return ("list", items)
        if value == "{":
            pairs: list[tuple[Node, Node]] = []
            while self.peek() != ("op", "}"):
                key = self.ternary()
                self.take(":")
                pairs.append((key, self.ternary()))
                if self.peek() == ("op", ","):
                    self.take()
            self.take("}")
            return ("map", pairs)
        raise Unsupported(f"unexpected {value!r}")


@functools.cache
def compile_rule(text: str) -> Node:
    return _Parser(text).parse()


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _size(value: Any) -> int:
    if isinstance(value, str | list | dict | bytes):
        return len(value)
    raise EvalError(f"size() of {type(value).__name__}")


def _is_sorted(value: Any) -> bool:
    """Kubernetes' list library ``isSorted()``."""
    if not isinstance(value, list):
        raise EvalError(f"isSorted() of {type(value).__name__}")
    try:
        return all(a <= b for a, b in zip(value, value[1:], strict=False))
    except TypeError as exc:
        raise EvalError(str(exc)) from None


def _type_name(value: Any) -> str:
    """CEL's ``type()`` as the name of the type denotation it equals."""
    if isinstance(value, bool):
        return "bool"
    for kind, name in ((int, "int"), (float, "double"), (str, "string"), (bytes, "bytes"), (list, "list"),
                       (dict, "map")):
        if isinstance(value, kind):
            return name
    return "null_type"


_METHODS: dict[str, Callable[..., Any]] = {
    "size": lambda x: _size(x),
    "contains": lambda x, s: s in x,
    "startsWith": lambda x, s: x.startswith(s),
    "endsWith": lambda x, s: x.endswith(s),
    "matches": lambda x, p: re.search(p, x) is not None,
    "lowerAscii": lambda x: x.lower(),
    "upperAscii": lambda x: x.upper(),
    "trim": lambda x: x.strip(),
    "isSorted": lambda x: _is_sorted(x),
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "size": _size,
    "int": lambda x: int(x),
    "double": lambda x: float(x),
    "string": lambda x: ("true" if x else "false") if isinstance(x, bool) else str(x),
    "bool": lambda x: x if isinstance(x, bool) else {"true": True, "false": False}[x],
    "matches": lambda x, p: re.search(p, x) is not None,
    "type": lambda x: _type_name(x),
}
_TYPE_NAMES = frozenset({"int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type"})
"""Type denotations, e.g. ``type(self) == int`` (for x-kubernetes-int-or-string fields)."""
_MACROS = ("all", "exists", "exists_one", "map", "filter")


def evaluate(node: Node, env: dict[str, Any]) -> Any:
    op = node[0]
    if op == "const":
        return node[1]
    if op == "var":
        if node[1] not in env and node[1] in _TYPE_NAMES:
            return node[1]
        if node[1] not in env:
            raise Unsupported(f"unknown identifier {node[1]!r}")
        return env[node[1]]
    if op == "field":
        target = evaluate(node[1], env)
        if not isinstance(target, dict):
            raise EvalError(f"no field {node[2]!r} on {type(target).__name__}")
        if node[2] not in target:
            raise EvalError(f"no such key: {node[2]}")
        return target[node[2]]
    if op == "index":
        target, index = evaluate(node[1], env), evaluate(node[2], env)
        try:
            return target[index]
        except (KeyError, IndexError, TypeError):
            raise EvalError(f"no such key: {index}") from None
    if op == "list":
        return [evaluate(n, env) for n in node[1]]
    if op == "map":
        return {evaluate(k, env): evaluate(v, env) for k, v in node[1]}
    if op == "not":
        value = evaluate(node[1], env)
        if not isinstance(value, bool):
            raise EvalError("! needs a bool")
        return not value
    if op == "neg":
        return -evaluate(node[1], env)
    if op == "?":
        return evaluate(node[2] if evaluate(node[1], env) else node[3], env)
    if op in ("||", "&&"):
        return _logical(op, node, env)
    if op == "call":
        return _call(node, env)
    left, right = evaluate(node[1], env), evaluate(node[2], env)
    return _binary(op, left, right)


def _logical(op: str, node: Node, env: dict[str, Any]) -> bool:
    decisive = op == "||"
    error: EvalError | None = None
    for side in (node[1], node[2]):
        try:
            value = evaluate(side, env)
        except EvalError as exc:
            error = exc
            continue
        if value is decisive:
            return decisive
    if error is not None:
        raise error
    return not decisive


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "in":
        return left in right
    if op in ("<", "<=", ">", ">="):
        if not ((_num(left) and _num(right)) or (type(left) is type(right))):
            raise EvalError(f"cannot compare {type(left).__name__} and {type(right).__name__}")
        return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    try:
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            return left // right if isinstance(left, int) and isinstance(right, int) else left / right
        if op == "%":
            return left % right
    except (TypeError, ZeroDivisionError) as exc:
        raise EvalError(str(exc)) from None
    raise Unsupported(f"operator {op}")


def _call(node: Node, env: dict[str, Any]) -> Any:
    _, name, target, args = node
    if name == "has" and target is None:
        if len(args) != 1 or args[0][0] != "field":
            raise Unsupported("has() needs a field selection")
        holder = evaluate(args[0][1], env)
        return isinstance(holder, dict) and args[0][2] in holder
    if target is not None and name in _MACROS:
        return _macro(name, evaluate(target, env), args, env)
    if target is not None:
        if name not in _METHODS:
            raise Unsupported(f"method {name}()")
        receiver = evaluate(target, env)
        try:
            return _METHODS[name](receiver, *[evaluate(a, env) for a in args])
        except (TypeError, AttributeError, re.error) as exc:
            raise EvalError(str(exc)) from None
    if name not in _FUNCTIONS:
        raise Unsupported(f"function {name}()")
    try:
        return _FUNCTIONS[name](*[evaluate(a, env) for a in args])
    except (TypeError, ValueError, KeyError, re.error) as exc:
        raise EvalError(str(exc)) from None


def _macro(name: str, collection: Any, args: list[Node], env: dict[str, Any]) -> Any:
    if not args or args[0][0] != "var":
        raise Unsupported(f"{name}() needs a variable")
    var = args[0][1]
    items = list(collection.keys()) if isinstance(collection, dict) else collection
    if not isinstance(items, list):
        raise EvalError(f"{name}() on {type(collection).__name__}")

    def each(node: Node) -> list[Any]:
        return [evaluate(node, {**env, var: item}) for item in items]

    if name == "map":
        return each(args[-1])
    results = each(args[1])
    if name == "all":
        return all(results)
    if name == "exists":
        return any(results)
    if name == "exists_one":
        return sum(1 for r in results if r) == 1
    return [item for item, keep in zip(items, results, strict=True) if keep]  # filter
