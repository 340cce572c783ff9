"""Endpoint health: whether a webhook URL may be sent to now, across all its streams.

An endpoint is one webhook URL, whichever agents' events go to it. It is held, its deliveries
staying pending without using up attempts, while it is:
- `disabled`: it answered `410 Gone`. Only a redelivery through the API enables it again.
- paused by the circuit breaker: after `circuit_failure_threshold` retryable failures in a row it
  is paused for `circuit_open_seconds` (or the answer's `Retry-After`, if longer). When the pause
  ends one stream sends one probe (half-open): a success closes the breaker, a failure pauses it
  again for twice as long, up to `circuit_max_open_seconds`. A success on any of its streams
  closes it too. An attempt begun before the latest pause says nothing of the probe.
Nothing held is ever dropped.

`EndpointHealth` is one dispatcher's view, in memory, so the hot path asks no database. Its
changes are written to `webhook_endpoints` by the dispatcher's batched writer; changes made
elsewhere (a redelivery through the API, another replica) come in through `refreshed`. An enable
by a redelivery wins over a change made here on an attempt begun before it, in memory as in the
table (`enabled_at`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from forge.config import WebhookSettings
from forge.delivery.outbox import (
    DELIVERED,
    ENDPOINT_ACTIVE,
    ENDPOINT_DISABLED,
    EXHAUSTED,
    PENDING,
    AttemptRecord,
    EndpointRecord,
    StreamKey,
)

log = logging.getLogger(__name__)

GONE_STATUS_CODE = 410
GONE_ERROR = "HTTP 410 Gone: endpoint disabled; redeliver a delivery to enable it again"


@dataclass(slots=True)
class EndpointState:
    """What one dispatcher knows of one endpoint that is not simply healthy."""

    url: str
    status: str = ENDPOINT_ACTIVE
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    consecutive_failures: int = 0
    paused_until: float | None = None
    # time.time() when the current pause began: attempts begun before it are not the probe.
    opened_at: float | None = None
    # time.time() when the attempt behind the latest change made here began, or the latest
    # enable read from the table: a row enabled after it wins over the state here.
    observed_at: float = 0.0
    # The stream sending the one probe of a half-open breaker.
    probe: StreamKey | None = None
    # Changes made here and not yet committed to the table.
    unwritten: int = 0
    # time.monotonic() when the last change made here was committed (inf while one is not): a
    # table read that began before then may be older than this state.
    settled_at: float = -math.inf

    def held(self, now: float) -> bool:
        """True while nothing may be sent: disabled, or paused and the pause not over."""
        return self.status == ENDPOINT_DISABLED or (
            self.paused_until is not None and now < self.paused_until
        )

    def half_open(self, now: float) -> bool:
        """True when a pause is over and no probe has answered yet."""
        return (
            self.status == ENDPOINT_ACTIVE
            and self.paused_until is not None
            and now >= self.paused_until
        )

    def healthy(self) -> bool:
        """True when the state says no more than no entry would."""
        return (
            self.status == ENDPOINT_ACTIVE
            and self.consecutive_failures == 0
            and self.paused_until is None
        )

    def record(self, observed_at: float) -> EndpointRecord:
        return EndpointRecord(
            url=self.url,
            status=self.status,
            disabled_reason=self.disabled_reason,
            disabled_at=self.disabled_at,
            consecutive_failures=self.consecutive_failures,
            paused_until=self.paused_until,
            observed_at=observed_at,
        )


class EndpointHealth:
    """The dispatcher's view of every endpoint that is disabled, paused or failing.

    Healthy endpoints have no entry, so a delivery to one costs a dictionary lookup.
    """

    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._states: dict[str, EndpointState] = {}

    def get(self, url: str) -> EndpointState | None:
        return self._states.get(url)

    # ---- may a stream send? ----------------------------------------------------------------------

    def can_send(self, url: str, stream: StreamKey, now: float) -> bool:
        """Whether `stream` may send to `url` now (without claiming the probe)."""
        state = self._states.get(url)
        if state is None:
            return True
        if state.held(now):
            return False
        if state.half_open(now):
            return state.probe is None or state.probe == stream
        return True

    def claim(self, url: str, stream: StreamKey, now: float) -> bool:
        """Like `can_send`, and when the breaker is half-open make `stream` its one prober."""
        if not self.can_send(url, stream, now):
            return False
        state = self._states.get(url)
        if state is not None and state.half_open(now):
            state.probe = stream
        return True

    def release(self, url: str, stream: StreamKey) -> None:
        """`stream` stopped sending: if it held the probe, another stream may probe."""
        state = self._states.get(url)
        if state is not None and state.probe == stream:
            state.probe = None

    def pauses(self, now: float) -> list[float]:
        """When the pauses still under way end (the dispatcher wakes then)."""
        return [
            s.paused_until
            for s in self._states.values()
            if s.paused_until is not None and s.paused_until > now and s.status == ENDPOINT_ACTIVE
        ]

    def awaiting_probe(self, now: float) -> list[str]:
        """The half-open endpoints whose probe is not claimed yet."""
        return [url for url, s in self._states.items() if s.half_open(now) and s.probe is None]

    def skipped_urls(self, now: float, limit: int) -> list[str]:
        """Up to `limit` endpoints the outbox scan should leave out: the half-open ones first
        (their probe is fetched on its own), then the held ones (the table usually knows of
        those too; the rest are skipped in memory)."""
        half_open = [url for url, s in self._states.items() if s.half_open(now)]
        held = [url for url, s in self._states.items() if s.held(now)]
        return (half_open + held)[:limit]

    # ---- outcomes --------------------------------------------------------------------------------

    def after_attempt(
        self, url: str, record: AttemptRecord, *, started: float, now: float
    ) -> EndpointRecord | None:
        """Update the endpoint for the outcome of an attempt begun at `started` (time.time());
        return what to write, if anything."""
        if record.status == DELIVERED:
            return self._succeeded(url, started)
        if record.last_status_code == GONE_STATUS_CODE:
            return self._gone(url, started, now)
        if record.status in (PENDING, EXHAUSTED):  # a retryable failure
            return self._failed(url, record, started, now)
        return None  # refused for good (4xx, URL refused): says nothing of the endpoint's health

    def _succeeded(self, url: str, started: float) -> EndpointRecord | None:
        state = self._states.get(url)
        if state is None or (state.consecutive_failures == 0 and state.paused_until is None):
            return None
        if state.paused_until is not None:
            log.info(
                "webhook endpoint %s answered again; its deliveries resume (circuit closed)",
                endpoint_label(url),
            )
        self._close(state)
        return self._changed(state, started)

    def _gone(self, url: str, started: float, now: float) -> EndpointRecord | None:
        state = self._state(url)
        if state.status == ENDPOINT_DISABLED:
            return None
        log.warning(
            "webhook endpoint %s answered 410 Gone: disabled; its deliveries wait until one of "
            "them is redelivered",
            endpoint_label(url),
        )
        state.status = ENDPOINT_DISABLED
        state.disabled_reason = "the endpoint answered HTTP 410 Gone"
        state.disabled_at = datetime.fromtimestamp(now, UTC)
        state.probe = None
        return self._changed(state, started)

    def _failed(
        self, url: str, record: AttemptRecord, started: float, now: float
    ) -> EndpointRecord | None:
        threshold = self._settings.circuit_failure_threshold
        if threshold == 0:
            # The breaker is off: clear what it left (it may have been on before a restart).
            state = self._states.get(url)
            if state is None or (state.consecutive_failures == 0 and state.paused_until is None):
                return None
            self._close(state)
            return self._changed(state, started)
        state = self._state(url)
        if state.held(now):
            return None  # an attempt begun before the endpoint was held: it says nothing new
        if state.opened_at is not None and started < state.opened_at:
            return None  # begun before the latest pause: neither the probe nor news
        state.consecutive_failures += 1
        state.probe = None
        if state.consecutive_failures >= threshold:
            doublings = min(state.consecutive_failures - threshold, 60)
            pause = min(
                self._settings.circuit_open_seconds * 2**doublings,
                self._settings.circuit_max_open_seconds,
            )
            if record.retry_after is not None:  # the endpoint said how long it needs
                pause = max(pause, min(record.retry_after, self._settings.max_retry_after_seconds))
            state.paused_until = now + pause
            state.opened_at = now
            log.warning(
                "webhook endpoint %s failed %d times in a row; its deliveries are paused for "
                "%.1fs (circuit open)",
                endpoint_label(url),
                state.consecutive_failures,
                pause,
            )
        return self._changed(state, started)

    def _state(self, url: str) -> EndpointState:
        state = self._states.get(url)
        if state is None:
            state = self._states[url] = EndpointState(url)
        return state

    @staticmethod
    def _close(state: EndpointState) -> None:
        state.consecutive_failures = 0
        state.paused_until = None
        state.opened_at = None
        state.probe = None

    @staticmethod
    def _changed(state: EndpointState, started: float) -> EndpointRecord:
        state.observed_at = max(state.observed_at, started)
        state.unwritten += 1
        state.settled_at = math.inf
        return state.record(observed_at=started)

    # ---- the table -------------------------------------------------------------------------------

    def written(self, records: list[EndpointRecord]) -> None:
        """The writer has committed (or given up on) `records`."""
        now = time.monotonic()
        for record in records:
            state = self._states.get(record.url)
            if state is None:
                continue
            state.unwritten = max(0, state.unwritten - 1)
            if state.unwritten == 0:
                state.settled_at = now

    def refreshed(
        self, rows: list[EndpointRecord], read_started: float, *, complete: bool
    ) -> list[EndpointRecord]:
        """Adopt the table's view, read from a snapshot taken after `read_started`
        (time.monotonic()).

        `complete`: `rows` are every endpoint not healthy in the table, so one missing from them
        is healthy there. Otherwise they are the rows changed lately, healthy ones included.
        Endpoints changed here since the read began keep their state, unless the row was enabled
        by a redelivery after that change's attempt began. Returns the changes to write back:
        with the breaker off, the pauses and failure counts it left in the table are cleared.
        """
        now = time.time()
        breaker_off = self._settings.circuit_failure_threshold == 0
        to_write: list[EndpointRecord] = []
        seen: set[str] = set()
        for row in rows:
            seen.add(row.url)
            state = self._states.get(row.url)
            if (
                state is not None
                and state.settled_at >= read_started
                and row.enabled_at <= state.observed_at
            ):
                continue  # changed here since: the state here is newer
            failures, paused_until = row.consecutive_failures, row.paused_until
            if breaker_off and (failures or paused_until is not None):
                failures, paused_until = 0, None
                to_write.append(
                    EndpointRecord(
                        url=row.url,
                        status=row.status,
                        disabled_reason=row.disabled_reason,
                        disabled_at=row.disabled_at,
                        consecutive_failures=0,
                        paused_until=None,
                        observed_at=now,
                    )
                )
            if row.status == ENDPOINT_ACTIVE and failures == 0 and paused_until is None:
                if state is not None:
                    self._forget(state, now)
                continue
            if state is None:
                state = self._states[row.url] = EndpointState(row.url)
            was_held = state.held(now)
            if paused_until is not None and paused_until != state.paused_until:
                state.opened_at = now  # attempts begun before now are not its probe
            state.status = row.status
            state.disabled_reason = row.disabled_reason
            state.disabled_at = row.disabled_at
            state.consecutive_failures = failures
            state.paused_until = paused_until
            state.observed_at = max(state.observed_at, row.enabled_at)
            if was_held and not state.held(now):
                log.info("webhook endpoint %s was enabled again", endpoint_label(row.url))
        for url, state in list(self._states.items()):
            if url in seen or state.settled_at >= read_started:
                continue
            if complete or state.healthy():
                # Healthy in the table: enabled again elsewhere, its row deleted, or a success
                # here that is written now.
                self._forget(state, now)
        return to_write

    def _forget(self, state: EndpointState, now: float) -> None:
        if state.held(now):
            log.info("webhook endpoint %s was enabled again", endpoint_label(state.url))
        del self._states[state.url]


def endpoint_label(url: str) -> str:
    """The endpoint's host and port for logs (paths and queries may carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"
