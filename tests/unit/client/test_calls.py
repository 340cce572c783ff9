"""How the client reads answers, decides on retries and checks requests before sending."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from forge.client import (
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from forge.client import _calls as calls
from forge.client._base import resolve_api_key, resolve_base_url, websocket_url
from forge.client.models import AgentCreate, MessageCreate


def _answer(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    request = httpx.Request("GET", "http://forge.test/api/v1/agents/ag_1")
    return httpx.Response(status, content=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, InvalidRequestError),
        (422, InvalidRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (418, APIError),
    ],
)
def test_an_error_answer_raises_its_class_with_the_servers_code_and_message(
    status: int, kind: type[APIError]
) -> None:
    body = b'{"error": "agent_not_found", "message": "agent ag_1 not found"}'
    with pytest.raises(kind) as raised:
        calls.get_agent("ag_1", None).answer(_answer(status, body))
    assert type(raised.value) is kind
    assert (raised.value.code, raised.value.message) == ("agent_not_found", "agent ag_1 not found")
    assert raised.value.status_code == status


def test_an_error_answer_that_is_not_forges_still_says_what_came() -> None:
    with pytest.raises(ServerError) as raised:
        calls.get_agent("ag_1", None).answer(_answer(502, b"<html>Bad Gateway</html>"))
    assert raised.value.code == "http_502" and raised.value.message == "Bad Gateway"


def test_a_rate_limit_carries_retry_after() -> None:
    body = b'{"error": "rate_limited", "message": "slow down"}'
    with pytest.raises(RateLimitError) as raised:
        calls.health().answer(_answer(429, body, {"Retry-After": "7"}))
    assert raised.value.retry_after == 7.0


def test_an_answer_that_is_not_the_documented_model_is_a_bad_response() -> None:
    from forge.client import InvalidResponseError

    with pytest.raises(InvalidResponseError) as raised:
        calls.get_agent("ag_1", None).answer(_answer(200, b'{"id": "ag_1"}'))
    assert raised.value.code == "bad_response" and "owner_id" in raised.value.message


def test_reads_are_retried_and_writes_only_when_nothing_was_done() -> None:
    read = calls.get_agent("ag_1", None)
    write = calls.send_message("ag_1", MessageCreate(content="hi"), None)
    unavailable = _answer(503)
    assert calls.retry_delay(read, 0, 2, unavailable) == 0.5
    assert calls.retry_delay(read, 1, 2, unavailable) == 1.0
    assert calls.retry_delay(read, 2, 2, unavailable) is None  # out of retries
    assert calls.retry_delay(write, 0, 2, unavailable) is None  # it may have been done
    assert calls.retry_delay(write, 0, 2, _answer(429, headers={"Retry-After": "3"})) == 3.0
    # Longer than a call should block: raised at once, with its retry_after.
    assert calls.retry_delay(read, 0, 2, _answer(429, headers={"Retry-After": "60"})) is None
    assert calls.retry_delay(read, 0, 2, _answer(404)) is None
    never_sent = httpx.ConnectError("refused")
    assert calls.retry_delay(write, 0, 2, never_sent) == 0.5
    assert calls.retry_delay(write, 0, 2, httpx.ReadError("reset")) is None
    assert calls.retry_delay(read, 0, 2, httpx.ReadError("reset")) == 0.5
    # A message with its own request_id is answered with the same run when sent again.
    keyed = calls.send_message("ag_1", MessageCreate(content="hi", request_id="r-1"), None)
    assert calls.retry_delay(keyed, 0, 2, unavailable) == 0.5
    assert calls.retry_delay(keyed, 0, 2, httpx.ReadError("reset")) == 0.5
    # Not ready is an answer, not an error to retry.
    assert calls.retry_delay(calls.ready(), 0, 2, _answer(503)) is None
    assert calls.ready().answer(_answer(503)) is False


def test_requests_are_checked_with_the_servers_models_before_sending() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        calls.build(AgentCreate, None, {"profile": "has spaces", "colour": "red"})
    assert raised.value.status_code is None
    assert "profile: String should match pattern" in raised.value.message
    assert "colour: is not a known field" in raised.value.message
    with pytest.raises(TypeError):
        calls.build(AgentCreate, AgentCreate(profile="p"), {"repo": "/r"})


def test_only_the_fields_set_are_sent_and_parameters_are_written_as_the_server_reads_them() -> None:
    call = calls.create_agent(calls.build(AgentCreate, None, {"profile": "p"}), wait=True)
    assert call.content() == b'{"profile":"p"}'
    assert call.query() == {"wait": "true"}
    listing = calls.list_sessions(
        None, None, None, datetime.fromisoformat("2026-11-21T10:00:00+01:00"), None, 5, None
    )
    assert listing.query() == {"created_after": "2026-11-21T10:00:00+01:00", "limit": "5"}
    naive = calls.list_sessions(None, None, None, datetime(2026, 11, 21), None, 5, None)
    with pytest.raises(InvalidRequestError, match="no time zone"):
        naive.query()


def test_ids_stay_one_path_segment() -> None:
    path = calls.get_agent("../keys", None).path
    assert httpx.URL("http://forge.test" + path).raw_path == b"/api/v1/agents/..%2Fkeys"
    for resolved_away in ("", ".", ".."):
        with pytest.raises(InvalidRequestError, match="is not an id"):
            calls.stop_session(resolved_away, None)


def test_the_base_url_and_key_come_from_the_arguments_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORGE_BASE_URL", raising=False)
    monkeypatch.delenv("FORGE_API_KEY", raising=False)
    assert resolve_base_url(None) == "http://127.0.0.1:8887"
    assert resolve_api_key(None) is None
    monkeypatch.setenv("FORGE_BASE_URL", "https://forge.example/prefix/")
    monkeypatch.setenv("FORGE_API_KEY", " fk_env ")
    assert resolve_base_url(None) == "https://forge.example/prefix"
    assert resolve_base_url("http://10.0.0.1:9000") == "http://10.0.0.1:9000"
    assert resolve_api_key(None) == "fk_env" and resolve_api_key("fk_arg") == "fk_arg"
    with pytest.raises(ValueError, match="printable ASCII"):
        resolve_api_key("clé")
    with pytest.raises(ValueError, match="http:// or https://"):
        resolve_base_url("forge.example:8887")
    url = websocket_url(
        "https://forge.example/prefix", "/api/v1/agents/a/stream", {"after": 3, "user_id": None}
    )
    assert url == "wss://forge.example/prefix/api/v1/agents/a/stream?after=3"
