"""What a stream keeps across connections: the last seq, the run it follows, when to give up."""

from __future__ import annotations

import json

import pytest

from forge.client import (
    APIConnectionError,
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    StreamLostError,
)
from forge.client._stream import Resumption, SseDecoder


def _event(seq: int, request_id: str = "req_1", final: bool = False) -> str:
    return json.dumps(
        {
            "event_type": "agent.complete" if final else "agent.event",
            "event_id": f"evt_{seq}",
            "agent_id": "ag_1",
            "request_id": request_id,
            "seq": seq,
            "timestamp": "2026-11-22T10:00:00.000Z",
            "is_final": final,
        }
    )


def test_each_seq_is_yielded_once_and_only_the_runs_asked_for() -> None:
    state = Resumption("ag_1", after=2, request_id="req_2", reconnect_for=None)
    assert state.take(_event(2, "req_2")) is None  # the caller had it
    assert state.take(_event(3, "req_1")) is None  # another run's
    event = state.take(_event(4, "req_2"))
    assert event is not None and event.seq == 4
    assert state.take(_event(4, "req_2")) is None  # sent again after a reconnection
    assert not state.finished
    # The final event is kept, to be yielded once the connection is closed.
    assert state.take(_event(5, "req_2", final=True)) is None
    assert state.finished and state.final is not None and state.final.seq == 5
    assert state.last_seq == 5


def test_a_404_ends_a_stream_that_was_served_and_refuses_one_that_never_was() -> None:
    gone = NotFoundError("agent_not_found", "agent ag_1 not found", 404)
    fresh = Resumption("ag_1", 0, None, reconnect_for=None)
    with pytest.raises(NotFoundError):
        fresh.retry_in(gone)
    fresh.connected()
    assert fresh.retry_in(gone) is None
    with pytest.raises(AuthenticationError):
        fresh.retry_in(AuthenticationError("invalid_api_key", "revoked", 401))
    # A 404 that is not Forge's (a proxy's, while a replica restarts) is tried again.
    assert fresh.retry_in(NotFoundError("http_404", "Not Found", 404)) == 0.2


def test_a_run_whose_agent_is_gone_before_its_final_event_raises() -> None:
    state = Resumption("ag_1", 0, "req_1", reconnect_for=None)
    state.connected()
    with pytest.raises(NotFoundError):
        state.retry_in(NotFoundError("agent_not_found", "agent ag_1 not found", 404))


def test_a_rate_limited_stream_waits_the_whole_retry_after() -> None:
    state = Resumption("ag_1", 0, None, reconnect_for=None)
    assert state.retry_in(RateLimitError("rate_limited", "slow down", 429, 45.0)) == 45.0


def test_drops_back_off_and_give_up_after_reconnect_for() -> None:
    state = Resumption("ag_1", 0, None, reconnect_for=None)
    drop = APIConnectionError("unreachable", "refused")
    delays = [state.retry_in(drop) for _ in range(7)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    state.connected()
    assert state.take(_event(1)) is not None  # an event resets the backoff
    assert state.retry_in(drop) == 0.2

    impatient = Resumption("ag_1", 7, None, reconnect_for=-1.0)
    with pytest.raises(StreamLostError) as lost:
        impatient.retry_in(drop)
    assert lost.value.code == "stream_lost" and "last seq 7" in lost.value.message


def test_sse_frames_are_joined_and_comments_skipped_across_chunks() -> None:
    body = 'retry: 2000\r\n: keep-alive\r\n\r\nid: 1\ndata: {"a":\ndata: 1}\n\n'
    body += 'data: {"line": "a\u2028b"}\r\rdata: 3\n'
    # Every split of the body into two chunks, a CRLF cut in two included.
    for cut in range(len(body) + 1):
        decoder = SseDecoder()
        data = decoder.feed(body[:cut]) + decoder.feed(body[cut:])
        assert data == ['{"a":\n1}', '{"line": "a\u2028b"}'], cut
        assert decoder.feed("\n") == ["3"]
