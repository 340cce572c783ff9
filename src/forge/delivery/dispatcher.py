"""The webhook dispatcher: sends the `deliveries` outbox, in order per stream, with retries.

How it works:
- A scan loop reads the heads of streams (the lowest pending delivery of each (endpoint_url,
  agent_id)) in one query, keeps the due ones as ready, and starts one stream worker for each, up
  to `max_in_flight` workers and `max_in_flight_per_endpoint` per endpoint, refilling from the
  ready ones as workers finish. It scans again when woken (`wake()`), when a waiting head falls
  due, when nothing is ready, and at least every second, so rows written by another process are
  noticed too. One scan returns at most twice `max_in_flight_per_endpoint` heads of one
  endpoint, so an endpoint with a large backlog cannot fill the batch and hide the others.
- A stream worker sends its stream's deliveries one at a time in `seq` order, loading them in
  batches. It stops at a delivery that must wait for a retry; the scan loop restarts the stream
  when that delivery is due. A slow stream therefore holds up only itself, and a slow endpoint
  at most its own share of the slots.
- Outcomes are written by one writer in batched, short transactions, never while an HTTP request is
  open. A worker frees its sending slot as soon as it stops sending, but holds its stream until its
  outcomes are committed, so the scan loop never restarts a stream from a stale head.
- Requests go straight to `WebhookTransport` (lean HTTP/1.1, one deadline per attempt), which
  also applies the URL guard's address rule to the addresses it actually connects to.
- Endpoint health (`endpoints.py`) is kept in memory: an endpoint that answered 410 is disabled,
  one that keeps failing is paused by its circuit breaker. The heads query leaves out the
  endpoints the table holds and those held or half-open here (a half-open endpoint's one probe
  is looked for on its own), and a worker stops sending when its endpoint becomes held; their
  deliveries stay pending with their attempts unused. Changes are written by the batched writer
  with the attempts that caused them. The rows changed lately are read back every second, or at
  once after `endpoint_changed()`, so an endpoint enabled again by a redelivery (in this process
  or another) is noticed; every `ENDPOINT_FULL_READ_SECONDS` all unhealthy rows are read, after
  deleting those that no longer hold anything back.
Delivery is at least once: a delivery sent but not yet recorded when the process dies is sent again
with the same `webhook-id`, which receivers use to drop duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from forge.config import WebhookSettings
from forge.core.errors import InvalidRequest
from forge.delivery.endpoints import GONE_ERROR, GONE_STATUS_CODE, EndpointHealth
from forge.delivery.outbox import (
    DELIVERED,
    EXHAUSTED,
    FAILED,
    PENDING,
    AttemptRecord,
    EndpointRecord,
    Outbox,
    PendingDelivery,
    StreamHead,
    StreamKey,
)
from forge.delivery.retry import (
    RETRY_AFTER_STATUS_CODES,
    is_retryable_status,
    next_attempt_at,
    parse_retry_after,
)
from forge.delivery.signing import headers_for
from forge.delivery.transport import Target, WebhookTransport
from forge.delivery.url_guard import (
    UnresolvableWebhookHost,
    address_refusal,
    check_webhook_url,
)
from forge.store.db import Database

log = logging.getLogger(__name__)

# Longest sleep of the scan loop, so rows written by another process are picked up.
MAX_IDLE_SECONDS = 1.0
# Stream heads read per scan of the outbox.
SCAN_BATCH = 1000
# Deliveries of one stream loaded per query.
STREAM_BATCH = 100
# Longest time between two reads of the endpoints' changed rows.
ENDPOINT_REFRESH_SECONDS = 1.0
# A read of changed rows looks this far before the previous read began, for rows committed late.
ENDPOINT_CHANGE_OVERLAP_SECONDS = 5.0
# How often every unhealthy row is read (and idle rows are deleted first).
ENDPOINT_FULL_READ_SECONDS = 30.0
# Rows that hold nothing back are deleted once unchanged this long. Longer than any attempt, so
# a redelivery's `enabled_at` outlives every change decided before it.
ENDPOINT_ROW_TTL_SECONDS = 600.0
# Endpoints left out of the outbox scan by URL, at most (the rest are skipped in memory).
MAX_SKIPPED_URLS = 500
# Shortest time between two scans of the outbox while busy.
MIN_SCAN_INTERVAL_SECONDS = 0.005
# How long a URL check (DNS included) is reused for the same URL.
URL_CHECK_TTL_SECONDS = 10.0
_URL_CACHE_SIZE = 10_000
_ERROR_SNIPPET = 200
# How long the writer lets records gather before a write: fewer, larger transactions.
_WRITE_COALESCE_SECONDS = 0.005
# Pause after a database error in a stream worker, so a failing database is not hammered.
_ERROR_PAUSE_SECONDS = 1.0
# Response bodies are only quoted in errors.
_EXTRA_HEADERS = {"accept-encoding": "identity"}


class WebhookDispatcher:
    """Delivers pending rows of the `deliveries` table to their endpoints.

    `start()` begins delivering, `wake()` says new rows were committed, `endpoint_changed()` says
    an endpoint's row was changed (enabled again), `stop()` ends gracefully.
    """

    def __init__(
        self, db: Database, settings: WebhookSettings, *, cluster: EndpointLocks | None = None
    ) -> None:
        self._settings = settings
        # With several replicas: one at a time delivers to an endpoint (its order, its breaker).
        self._locks = cluster
        self._outbox = Outbox(db)
        self._transport: WebhookTransport | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._scan_task: asyncio.Task[None] | None = None
        self._streams: dict[StreamKey, asyncio.Task[None]] = {}
        # Workers sending now (the others only wait for their outcomes to be committed, and
        # keep their stream from being started again until then). At most max_in_flight, and
        # max_in_flight_per_endpoint per URL.
        self._sending = 0
        self._sending_to: collections.Counter[str] = collections.Counter()
        # Streams whose worker ended since the current scan began: the scan may have read their
        # head before the worker's last outcome was committed, so it must not restart them.
        self._ended_during_scan: set[StreamKey] = set()
        # Due heads read by the last scan and not started yet, oldest first.
        self._ready: dict[StreamKey, StreamHead] = {}
        self._rescan = True  # set by wake(): new rows may have made new streams due
        self._wakes = 0  # wake() calls so far
        self._wakes_at_scan = 0  # ... when the last scan began
        self._next_due = math.inf  # earliest known next_attempt_at of a stream that is waiting
        self._last_scan = -math.inf  # time.monotonic() of the last scan
        self._scan_cost = 0.0  # seconds the last scan took
        self._writer: _RecordWriter | None = None
        # url -> (monotonic expiry, refusal message or None when allowed)
        self._url_checks: dict[str, tuple[float, str | None]] = {}
        self._targets: dict[str, Target] = {}
        self._health = EndpointHealth(settings)
        self._refresh_wanted = True  # read the endpoints' state before the next scan
        self._last_refresh = -math.inf  # time.monotonic() of the last read
        self._last_full_read = -math.inf  # ... of the last read of every unhealthy row
        self._last_read_wall = 0.0  # time.time() when the last read began

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin delivering. Pending rows left by an earlier process are picked up at once."""
        if self._scan_task is not None:
            return
        self._transport = WebhookTransport(
            # Every attempt in flight may go to one origin: keep that many connections.
            max_idle_per_origin=self._settings.max_in_flight,
            check_address=functools.partial(address_refusal, settings=self._settings),
        )
        self._stopping = False
        self._ready.clear()
        self._rescan = True
        self._health = EndpointHealth(self._settings)  # read afresh from the table
        self._refresh_wanted = True
        self._last_full_read = -math.inf
        self._writer = _RecordWriter(self._outbox, on_written=self._health.written)
        self._writer.start()
        self._scan_task = asyncio.create_task(self._scan_loop(), name="webhook-dispatcher")

    def wake(self) -> None:
        """Look for due deliveries now. Cheap; call it after committing new delivery rows."""
        self._rescan = True
        self._wakes += 1
        self._wake.set()

    def endpoint_changed(self, url: str) -> None:
        """An endpoint's row was changed elsewhere (e.g. enabled again by a redelivery): read the
        endpoints' state and look for due deliveries now."""
        self._refresh_wanted = True
        self.wake()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop: attempts under way get `grace_seconds` to finish, then are cancelled.

        Outcomes already known are written; a cancelled attempt leaves its row pending, so it is
        sent again after a restart.
        """
        if self._scan_task is None:
            return
        self._stopping = True
        self._wake.set()
        tasks = [self._scan_task, *self._streams.values()]
        _done, late = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        self._streams.clear()
        # Tasks cancelled before they ran never counted themselves out.
        self._sending = 0
        self._sending_to.clear()
        self._scan_task = None

    # ---- scan loop -------------------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self._dispatch()
            except Exception:
                log.exception("webhook dispatcher: reading the outbox failed; trying again")
                delay = MAX_IDLE_SECONDS
            if self._stopping:
                break
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _dispatch(self) -> float:
        """Start workers for due streams; return how long the loop may sleep."""
        if self._sending >= self._settings.max_in_flight:
            return MAX_IDLE_SECONDS  # a finishing worker wakes the loop
        held_back = 0.0
        if self._scan_wanted():
            # A scan costs time in proportion to the pending rows, so scans are spaced out by
            # at least their own duration: at most half the time goes to scanning.
            pause = self._last_scan + max(MIN_SCAN_INTERVAL_SECONDS, self._scan_cost)
            pause -= time.monotonic()
            if pause <= 0:
                await self._scan()
            elif not self._ready:
                return pause
            else:
                held_back = pause
        await self._start_ready()
        if self._ready and self._sending >= self._settings.max_in_flight:
            return MAX_IDLE_SECONDS  # every slot is busy; a finishing worker wakes the loop
        # What is still ready waits for its endpoint's share (a finishing worker wakes the
        # loop), or for a scan.
        until_due = self._next_due - time.time()
        until_rescan = self._last_scan + MAX_IDLE_SECONDS - time.monotonic()
        return max(held_back, min(until_due, until_rescan, MAX_IDLE_SECONDS))

    def _scan_wanted(self) -> bool:
        return (
            self._rescan
            or not self._ready
            or time.time() >= self._next_due
            or time.monotonic() - self._last_scan >= MAX_IDLE_SECONDS
        )

    async def _scan(self) -> None:
        """Read the heads of streams: due ones become ready, the first not due sets `_next_due`."""
        self._rescan = False
        self._wakes_at_scan = self._wakes
        self._ended_during_scan.clear()
        self._next_due = math.inf  # before reading: workers ending meanwhile add theirs
        started = time.monotonic()
        if self._refresh_wanted or started - self._last_refresh >= ENDPOINT_REFRESH_SECONDS:
            await self._refresh_endpoints()
        now = time.time()
        heads = await self._outbox.heads(
            # Heads of busy streams come back too; asking for that many more leaves room.
            limit=SCAN_BATCH + len(self._streams),
            now=now,
            skip_urls=self._health.skipped_urls(now, MAX_SKIPPED_URLS),
            per_endpoint=2 * self._settings.max_in_flight_per_endpoint,
            pauses=self._settings.circuit_failure_threshold > 0,
        )
        probes = await self._probe_candidates(now)
        now = time.time()
        self._ready.clear()
        for head in heads:
            stream = head.delivery.stream
            if stream in self._streams or stream in self._ended_during_scan:
                continue  # an ended stream wakes the loop, and the next scan reads it afresh
            if not self._health.can_send(stream[0], stream, now):
                continue  # held: disabled or paused here, and not yet in the table
            if head.delivery.next_attempt_at > now:
                self._due_at(head.delivery.next_attempt_at)
                break
            self._ready.setdefault(stream, head)
        for head in probes:
            if head.delivery.next_attempt_at > now:
                self._due_at(head.delivery.next_attempt_at)
            else:
                self._ready.setdefault(head.delivery.stream, head)
        for pause_ends in self._health.pauses(now):
            self._due_at(pause_ends)
        self._last_scan = time.monotonic()
        self._scan_cost = self._last_scan - started

    async def _probe_candidates(self, now: float) -> list[StreamHead]:
        """For each half-open endpoint without a probe, the head of its oldest idle stream (the
        scan leaves these endpoints out, so their many streams do not fill its batch)."""
        candidates: list[StreamHead] = []
        for url in self._health.awaiting_probe(now):
            busy = sum(1 for stream in self._streams if stream[0] == url)
            for head in await self._outbox.heads_of(url, limit=busy + 1):
                stream = head.delivery.stream
                if stream not in self._streams and stream not in self._ended_during_scan:
                    candidates.append(head)
                    break
        return candidates

    async def _refresh_endpoints(self) -> None:
        """Adopt the endpoints' state from the table (changed by a redelivery or a replica): the
        rows changed lately, or every unhealthy row now and then."""
        self._refresh_wanted = False
        started, started_wall = time.monotonic(), time.time()
        complete = started - self._last_full_read >= ENDPOINT_FULL_READ_SECONDS
        if complete:
            try:
                await self._outbox.delete_idle_endpoints(
                    now=started_wall,
                    written_before=datetime.fromtimestamp(
                        started_wall - ENDPOINT_ROW_TTL_SECONDS, UTC
                    ),
                )
            except Exception:
                log.exception("webhook dispatcher: deleting idle endpoint rows failed")
            rows = await self._outbox.unhealthy_endpoints()
            self._last_full_read = started
        else:
            since = self._last_read_wall - ENDPOINT_CHANGE_OVERLAP_SECONDS
            rows = await self._outbox.endpoints_changed_since(datetime.fromtimestamp(since, UTC))
        self._last_refresh = started
        self._last_read_wall = started_wall
        for change in self._health.refreshed(rows, started, complete=complete):
            if self._writer is not None:
                self._writer.add(None, change)

    async def _start_ready(self) -> None:
        """Start workers for ready streams while there is room, oldest first; a stream whose
        endpoint has its share of the slots stays ready for later."""
        room = self._settings.max_in_flight - self._sending
        share = self._settings.max_in_flight_per_endpoint
        chosen: list[StreamHead] = []
        taken: collections.Counter[str] = collections.Counter()
        now = time.time()
        for stream in list(self._ready):
            if len(chosen) >= room:
                break
            url = stream[0]
            if self._sending_to[url] + taken[url] >= share:
                continue
            head = self._ready.pop(stream)
            if self._locks is not None and not await self._locks.try_lock(_lock_name(url)):
                continue  # another replica delivers to this endpoint now; a later scan retries
            # A half-open endpoint gets one probe: the first of its streams claims it.
            if stream not in self._streams and self._health.claim(url, stream, now):
                chosen.append(head)
                taken[url] += 1
            elif self._locks is not None and not taken[url] and not self._sends_to(url):
                await self._locks.unlock(_lock_name(url))
        if not chosen:
            return
        try:
            await self._outbox.load_bodies([head.delivery for head in chosen])
        except BaseException:
            for head in chosen:
                self._health.release(*_url_and_stream(head))
            if self._locks is not None:
                for url in {head.delivery.stream[0] for head in chosen}:
                    if not self._sends_to(url):
                        await self._locks.unlock(_lock_name(url))
            raise
        for index, head in enumerate(chosen):
            if self._stopping:
                for left in chosen[index:]:
                    self._health.release(*_url_and_stream(left))
                break
            stream = head.delivery.stream
            self._sending += 1
            self._sending_to[stream[0]] += 1
            self._streams[stream] = asyncio.create_task(
                self._run_stream(head, self._wakes_at_scan),
                name=f"webhook-stream:{_host(stream[0])}",
            )

    def _sends_to(self, url: str) -> bool:
        return any(stream[0] == url for stream in self._streams)

    def _due_at(self, when: float) -> None:
        """Note that a stream is due again at `when`, so the loop wakes then."""
        self._next_due = min(self._next_due, when)

    # ---- stream workers --------------------------------------------------------------------------

    async def _run_stream(self, head: StreamHead, wakes_at_scan: int) -> None:
        stream = head.delivery.stream
        url = stream[0]
        try:
            try:
                written, due_at = await self._drain_stream(head)
            finally:
                # Its slot is free once it stops sending; another stream may use it meanwhile.
                self._sending -= 1
                if self._sending_to[url] >= self._settings.max_in_flight_per_endpoint and not any(
                    stream[0] == url for stream in self._ready
                ):
                    # Its endpoint had its whole share, and none of its other streams is ready
                    # (a scan leaves out some of a busy endpoint's heads): look for them.
                    self._rescan = True
                self._sending_to[url] -= 1
                if self._sending_to[url] <= 0:
                    del self._sending_to[url]
                self._wake.set()
            if written is not None and not await written:
                await asyncio.sleep(_ERROR_PAUSE_SECONDS)
            if due_at is not None:
                self._due_at(due_at)
            elif self._wakes != wakes_at_scan:
                # Rows may have been added to this stream since its head was read, and a scan
                # while it ran skipped it: look again.
                self._rescan = True
        except Exception:
            log.exception("webhook dispatcher: stream to %s failed; trying again", _host(url))
            await asyncio.sleep(_ERROR_PAUSE_SECONDS)
        finally:
            self._health.release(url, stream)
            self._streams.pop(stream, None)
            self._ended_during_scan.add(stream)
            if self._locks is not None and not self._sends_to(url):
                # After the outcome was written (awaited above): the next replica to take the
                # endpoint finds it.
                await self._locks.unlock(_lock_name(url))
            self._wake.set()

    async def _drain_stream(
        self, head: StreamHead
    ) -> tuple[asyncio.Future[bool] | None, float | None]:
        """Send the stream's due deliveries in order.

        Returns the future of the last write and, when the stream stopped at a delivery that must
        wait, when that delivery is due. Stops, leaving the rest pending, when the endpoint is
        disabled or paused meanwhile (the scan loop comes back when it may send again).
        """
        assert self._writer is not None
        stream = head.delivery.stream
        url = stream[0]
        queue: deque[PendingDelivery] = deque([head.delivery])
        maybe_more = head.pending > 1
        last = (head.delivery.seq, head.delivery.id)
        written: asyncio.Future[bool] | None = None
        while not self._stopping:
            if not queue:
                if not maybe_more:
                    break
                batch = await self._outbox.next_in_stream(stream, last, STREAM_BATCH)
                queue.extend(batch)
                maybe_more = len(batch) == STREAM_BATCH
                if not queue:
                    break
            delivery = queue[0]
            started = time.time()
            if delivery.next_attempt_at > started:
                return written, delivery.next_attempt_at  # the scan loop comes back then
            if not self._health.claim(url, stream, started):
                return written, None  # held; the scan loop comes back when it is not
            if self._locks is not None and not self._locks.holds(_lock_name(url)):
                # The lock went with a lost connection: another replica may have the endpoint.
                return written, None
            queue.popleft()
            last = (delivery.seq, delivery.id)
            record = await self._attempt(delivery)
            was_paused = self._is_paused(url)
            change = self._health.after_attempt(url, record, started=started, now=time.time())
            written = self._writer.add(record, change)
            if change is not None:
                if change.paused_until is not None:
                    self._due_at(change.paused_until)  # wake for the probe
                elif was_paused:
                    self._rescan = True  # the breaker closed: its other streams may go
                    self._wake.set()
            if record.status == PENDING:
                if record.last_status_code == GONE_STATUS_CODE:
                    return written, None  # disabled: held until a redelivery enables it
                return written, record.next_attempt_at
        return written, None

    def _is_paused(self, url: str) -> bool:
        state = self._health.get(url)
        return state is not None and state.paused_until is not None

    # ---- one attempt -----------------------------------------------------------------------------

    async def _attempt(self, delivery: PendingDelivery) -> AttemptRecord:
        """Send one delivery once and say what to record. Never raises (but for cancellation)."""
        url = delivery.endpoint_url
        try:
            refusal = await self._check_url(url)
            if refusal is not None:
                return self._fail(delivery, None, f"URL refused: {refusal}", attempted=False)
            if delivery.body is None:
                return self._fail(delivery, None, "the event no longer exists", attempted=False)
            body = delivery.body.encode()
            try:
                headers = headers_for(delivery.event_id, body, delivery.secret)
            except InvalidRequest as exc:
                return self._fail(delivery, None, exc.message, attempted=False)
            status_code, retry_after, snippet = await self._post(url, body, headers)
        except UnresolvableWebhookHost as exc:
            return self._retry(delivery, None, exc.message)  # DNS may be down for a moment
        except (TimeoutError, httpx.TimeoutException):
            seconds = self._settings.timeout_seconds
            return self._retry(delivery, None, f"timed out after {seconds:g}s")
        except httpx.TransportError as exc:
            return self._retry(delivery, None, f"connection failed: {_describe(exc)}")
        except Exception as exc:
            log.exception("webhook delivery to %s: unexpected error", _host(url))
            return self._retry(delivery, None, f"internal error: {type(exc).__name__}")

        if 200 <= status_code < 300:
            return AttemptRecord(
                id=delivery.id,
                status=DELIVERED,
                attempts=delivery.attempts + 1,
                next_attempt_at=delivery.next_attempt_at,
                last_status_code=status_code,
                last_error=None,
                delivered_at=datetime.now(UTC),
                generation=delivery.generation,
            )
        if status_code == GONE_STATUS_CODE:
            return self._gone(delivery)
        error = f"HTTP {status_code}" + (f": {snippet}" if snippet else "")
        if is_retryable_status(status_code):
            after = None
            if status_code in RETRY_AFTER_STATUS_CODES:
                after = parse_retry_after(retry_after, time.time())
            return self._retry(delivery, status_code, error, retry_after=after)
        if 300 <= status_code < 400:
            error = f"HTTP {status_code}: redirects are not followed; use the final URL"
        return self._fail(delivery, status_code, error)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str]:
        """POST and return (status code, Retry-After header, start of the response text)."""
        assert self._transport is not None
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _URL_CACHE_SIZE:
                self._targets.clear()
            target = self._targets[url] = Target.parse(url)
        headers.update(_EXTRA_HEADERS)
        response = await self._transport.post(
            target, headers, body, timeout=self._settings.timeout_seconds
        )
        return response.status_code, response.header("retry-after"), _snippet(response.content)

    def _gone(self, delivery: PendingDelivery) -> AttemptRecord:
        """410 Gone: the endpoint is disabled (`EndpointHealth`) and the delivery is held with the
        rest, pending and due, the attempt not counted: the endpoint is at fault, not it."""
        log.warning(
            "webhook delivery to %s answered 410 Gone; held until the endpoint is enabled again",
            _host(delivery.endpoint_url),
        )
        return AttemptRecord(
            delivery.id,
            PENDING,
            delivery.attempts,
            delivery.next_attempt_at,
            GONE_STATUS_CODE,
            GONE_ERROR,
            generation=delivery.generation,
        )

    def _retry(
        self,
        delivery: PendingDelivery,
        status_code: int | None,
        error: str,
        *,
        retry_after: float | None = None,
    ) -> AttemptRecord:
        attempts = delivery.attempts + 1
        now = time.time()
        when = next_attempt_at(
            attempts,
            now,
            self._settings.retry_schedule_seconds,
            self._settings.jitter,
            retry_after=retry_after,
            max_retry_after=self._settings.max_retry_after_seconds,
        )
        host = _host(delivery.endpoint_url)
        shown = status_code if status_code is not None else error
        if when is None:
            log.warning(
                "webhook delivery to %s failed (%s), attempt %d; retries used up, giving up",
                host,
                shown,
                attempts,
            )
            return AttemptRecord(
                delivery.id,
                EXHAUSTED,
                attempts,
                now,
                status_code,
                error,
                generation=delivery.generation,
                retry_after=retry_after,
            )
        log.info(
            "webhook delivery to %s failed (%s), attempt %d; retrying in %.1fs",
            host,
            shown,
            attempts,
            when - now,
        )
        return AttemptRecord(
            delivery.id,
            PENDING,
            attempts,
            when,
            status_code,
            error,
            generation=delivery.generation,
            retry_after=retry_after,
        )

    def _fail(
        self,
        delivery: PendingDelivery,
        status_code: int | None,
        error: str,
        *,
        attempted: bool = True,
    ) -> AttemptRecord:
        attempts = delivery.attempts + (1 if attempted else 0)
        log.warning(
            "webhook delivery to %s failed (%s), attempt %d; not retrying",
            _host(delivery.endpoint_url),
            status_code if status_code is not None else error,
            attempts,
        )
        return AttemptRecord(
            delivery.id,
            FAILED,
            attempts,
            time.time(),
            status_code,
            error,
            generation=delivery.generation,
        )

    async def _check_url(self, url: str) -> str | None:
        """Why the URL guard refuses `url` now, or None. A recent verdict for it is reused.

        Raises `UnresolvableWebhookHost` (not cached) when the host does not resolve.
        """
        now = time.monotonic()
        cached = self._url_checks.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            await check_webhook_url(url, self._settings)
            refusal = None
        except UnresolvableWebhookHost:
            raise
        except InvalidRequest as exc:
            refusal = exc.message
        if len(self._url_checks) >= _URL_CACHE_SIZE:
            self._url_checks.clear()
        self._url_checks[url] = (now + URL_CHECK_TTL_SECONDS, refusal)
        return refusal


class _RecordWriter:
    """Writes attempt records, and the endpoint changes they caused, in batches: whatever piles up
    during one write goes in the next. `on_written` hears of the endpoint changes once their
    write is over (committed or failed)."""

    def __init__(
        self, outbox: Outbox, *, on_written: Callable[[list[EndpointRecord]], None]
    ) -> None:
        self._outbox = outbox
        self._on_written = on_written
        self._records: list[AttemptRecord] = []
        self._endpoints: list[EndpointRecord] = []
        self._written: asyncio.Future[bool] | None = None
        self._has_work = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-record-writer")

    def add(
        self, record: AttemptRecord | None, endpoint: EndpointRecord | None = None
    ) -> asyncio.Future[bool]:
        """Queue `record` and `endpoint` (either may be None); the future becomes True once they
        are committed, False if that failed."""
        if record is not None:
            self._records.append(record)
        if endpoint is not None:
            self._endpoints.append(endpoint)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        self._has_work.set()
        return self._written

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._has_work.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            if not self._closing:
                await asyncio.sleep(_WRITE_COALESCE_SECONDS)  # let a batch gather
            self._has_work.clear()
            await self._write_queued()
            if self._closing and not self._records and not self._endpoints:
                return

    async def _write_queued(self) -> None:
        records, endpoints, written = self._records, self._endpoints, self._written
        self._records, self._endpoints, self._written = [], [], None
        if written is None or not (records or endpoints):
            return
        try:
            await self._outbox.record(records, endpoints)
        except Exception:
            # The rows stay pending and are sent again: at least once, never lost.
            log.exception("webhook dispatcher: recording %d attempts failed", len(records))
            _settle(written, False)
        else:
            _settle(written, True)
        finally:
            if endpoints:
                self._on_written(endpoints)


def _settle(written: asyncio.Future[bool], ok: bool) -> None:
    # A worker cancelled by stop() while awaiting the future cancels it with itself.
    if not written.done():
        written.set_result(ok)


class EndpointLocks(Protocol):
    """Session locks shared by the replicas (`forge.core.cluster.Cluster`)."""

    async def try_lock(self, name: str) -> bool: ...

    async def unlock(self, name: str) -> None: ...

    def holds(self, name: str) -> bool: ...


def _lock_name(url: str) -> str:
    return f"webhook:{url}"


def _url_and_stream(head: StreamHead) -> tuple[str, StreamKey]:
    stream = head.delivery.stream
    return stream[0], stream


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return _snippet(f"{type(exc).__name__}: {text}".encode()) if text else type(exc).__name__


def _snippet(data: bytes) -> str:
    text = " ".join(data[: _ERROR_SNIPPET * 4].decode("utf-8", "replace").split())
    return text if len(text) <= _ERROR_SNIPPET else text[: _ERROR_SNIPPET - 1] + "…"
