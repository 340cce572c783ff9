"""`NeuronPosition`: what a neuron stream resumes from, how its connections began, and the
frames of a connection given up by `resync`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge.client._exceptions import InvalidResponseError, NotFoundError, ServerError
from forge.client._neurons import NeuronPosition


def _frame(source: str, version: int, data: Any) -> str:
    return json.dumps(
        {
            "neuron": "wish",
            "source": source,
            "version": version,
            "fold": "1",
            "seq": 3,
            "data": data,
        }
    )


SNAPSHOT = _frame("snapshot", 4, {"agent_id": "ag_1", "status": "idle"})
OP = {"op": "replace", "path": "/status", "value": "working"}


def test_resume_parameters_follow_the_frames_and_resync_forgets_them() -> None:
    position = NeuronPosition("wish", reconnect_for=None)
    assert position.resume_params() == ({}, 0)
    position.connected()
    assert position.take(SNAPSHOT, 0) is not None
    frame = position.take(_frame("diff", 5, OP), 0)
    assert frame is not None and frame.data == OP and not frame.is_snapshot
    assert position.take(_frame("diff", 5, OP), 0) is None  # already received
    assert position.resume_params() == ({"version": 5, "agent_id": "ag_1", "fold": "1"}, 0)
    assert (position.snapshots, position.resumes) == (1, 0)

    position.connected()
    assert position.take(_frame("diff", 6, OP), 0) is not None
    assert (position.snapshots, position.resumes) == (1, 1)

    position.resync()
    assert position.stale(0) and position.take(_frame("diff", 7, OP), 0) is None
    assert position.resume_params() == ({}, 1)
    position.connected()
    snapshot = position.take(SNAPSHOT, 1)
    assert snapshot is not None and snapshot.generation == 1 and position.snapshots == 2


def test_refusals_raise_drops_wait_and_bad_frames_are_bad_responses() -> None:
    position = NeuronPosition("wish", reconnect_for=None)
    with pytest.raises(NotFoundError):
        position.retry_in(NotFoundError("neuron_not_found", "no such neuron", 404))
    assert position.retry_in(ServerError("internal_error", "oops", 500)) == 0.2
    with pytest.raises(InvalidResponseError):
        position.take("not json", 0)
    with pytest.raises(InvalidResponseError):
        position.take(_frame("snapshot", 1, ["not", "a", "document"]), 0)
