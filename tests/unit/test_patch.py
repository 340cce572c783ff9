"""The JSON Patch applier of neuron documents and `forge talk`, against the `jsonpatch` package."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from forge.patch import PatchError, apply_operation


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "add", "path": "/messages/-", "value": {"role": "user", "text": "hi"}},
        {"op": "add", "path": "/messages/0", "value": {"role": "user", "text": "first"}},
        {"op": "remove", "path": "/messages/0"},
        {"op": "replace", "path": "/status", "value": "working"},
        {"op": "replace", "path": "/usage", "value": {"input_tokens": 3}},
        {"op": "replace", "path": "/messages/1/text", "value": "edited"},
        {"op": "add", "path": "/a~1b", "value": 1},
        {"op": "remove", "path": "/todos"},
    ],
)
def test_the_applier_agrees_with_jsonpatch(operation: dict[str, Any]) -> None:
    def document() -> dict[str, Any]:
        messages = [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]
        return {"status": "idle", "messages": messages, "todos": [], "usage": {}}

    expected = jsonpatch.apply_patch(document(), [operation])
    assert apply_operation(document(), operation) == expected


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": "/missing", "value": 1},
        {"op": "remove", "path": "/messages/5"},
        {"op": "add", "path": "/messages/01", "value": 1},
        {"op": "move", "from": "/status", "path": "/x"},
        {"op": "add", "path": "status", "value": 1},
    ],
)
def test_the_applier_refuses_what_it_cannot_apply(operation: dict[str, Any]) -> None:
    with pytest.raises(PatchError):
        apply_operation({"status": "idle", "messages": [1, 2]}, operation)
