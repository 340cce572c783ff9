"""JSON Patch (RFC 6902) `add`, `replace` and `remove`, applied in place: what neuron state
documents are built with (`forge.core.neurons`) and what `forge talk` keeps its copy with. Light
on imports, for the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PatchError(ValueError):
    """Raised by `apply_operation` for an operation it cannot apply (unknown op, a path that
    does not exist); the stream then starts again from a snapshot."""


def _pointer(path: object) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"not a JSON pointer: {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def _index(token: str, size: int) -> int:
    if not token.isdigit() or (token != "0" and token.startswith("0")) or int(token) >= size:
        raise PatchError(f"no index {token!r} in a list of {size}")
    return int(token)


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"no member {token!r}")
        return node[token]
    if isinstance(node, list):
        return node[_index(token, len(node))]
    raise PatchError(f"cannot descend into {type(node).__name__} at {token!r}")


def apply_operation(document: Any, operation: Mapping[str, Any]) -> Any:
    """Apply one RFC 6902 `add`, `replace` or `remove` to `document` in place and return the
    document (a new one when the path is the root)."""
    op = operation.get("op")
    if op not in ("add", "replace", "remove"):
        raise PatchError(f"unsupported operation {op!r}")
    tokens = _pointer(operation.get("path"))
    if op != "remove" and "value" not in operation:
        raise PatchError(f"{op} without a value")
    value = operation.get("value")
    if not tokens:
        if op == "remove":
            raise PatchError("cannot remove the document")
        return value
    parent = document
    for token in tokens[:-1]:
        parent = _child(parent, token)
    key = tokens[-1]
    if isinstance(parent, dict):
        if op != "add" and key not in parent:
            raise PatchError(f"no member {key!r} to {op}")
        if op == "remove":
            del parent[key]
        else:
            parent[key] = value
    elif isinstance(parent, list):
        if op == "add":
            parent.insert(len(parent) if key == "-" else _index(key, len(parent) + 1), value)
        elif op == "replace":
            parent[_index(key, len(parent))] = value
        else:
            del parent[_index(key, len(parent))]
    else:
        raise PatchError(f"cannot {op} inside {type(parent).__name__}")
    return document
