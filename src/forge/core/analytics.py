"""The dashboard's numbers: the server's status now, and what sessions and runs did over a range.

Definitions (docs/dashboard.md says the same for readers of the API):

- runs are counted by `created_at` in [since, until); sessions likewise;
- errors are runs that ended `failed`, `timed_out` or `error` (`interrupted` is not an error);
  `error_rate` is errors / ended runs (0 when none ended);
- `busy_seconds` is the part of each run's [started_at, finished_at or now] inside the bucket
  (runs created before the range that ran into it count here too);
- a bucket's `utilization` is busy_seconds / (the bucket's seconds x the sessions that existed
  during it), at most 1; a profile's is its busy seconds / the seconds its sessions existed in the
  range, at most 1;
- `average_session_seconds` is over the sessions created in the range: (their last run's
  finished_at, else updated_at) - created_at; `average_run_seconds` over the runs created in the
  range that started and finished;
- tokens and cost are summed from the runs' `usage`.

Buckets are aligned to whole hours or days in the offset `since` was given in (UTC by default);
the first starts at `since` itself and the last ends at `until`. The runs and sessions of one
answer are read in one query each, at most `MAX_ROWS` of each (`truncated` says when more
matched: narrow the range or name an owner).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field
from sqlalchemy import and_, exists, func, or_, select

from forge.core.errors import InvalidRequest
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow, utcnow

log = logging.getLogger(__name__)

Bucket = Literal["hour", "day"]
BUCKET_SECONDS: dict[str, int] = {"hour": 3600, "day": 86400}
MAX_BUCKETS = 400
# Runs (and sessions) read for one answer, at most.
MAX_ROWS = 100_000
DEFAULT_RANGE = timedelta(days=7)
# Ranges up to this long get hourly buckets unless `bucket` says otherwise.
HOURLY_UP_TO = timedelta(hours=48)
# How long a worktree disk measurement is reused.
WORKTREE_CACHE_SECONDS = 30.0
_WORKTREE_CACHE_LIMIT = 1000
ENDED = frozenset({"succeeded", "failed", "interrupted", "timed_out", "error"})
ERRORS = frozenset({"failed", "timed_out", "error"})
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


# ---- answers ----------------------------------------------------------------------------------


class DatabaseStatus(BaseModel):
    backend: str = Field(description="sqlite or postgresql.")
    ok: bool
    latency_ms: float = Field(description="How long a trivial query took.")


class SessionCounts(BaseModel):
    active: int = Field(description="provisioning + running + queued.")
    provisioning: int
    running: int
    idle: int
    queued: int = Field(description="Ready sessions with runs waiting.")
    stopped: int
    failed: int
    total: int = Field(description="Every session not deleted.")


class QueueCounts(BaseModel):
    queued_runs: int
    running_runs: int
    max_concurrent: int = Field(description="`[sessions] max_concurrent`.")


class WorktreeUsage(BaseModel):
    count: int
    disk_bytes: int


class DashboardStatus(BaseModel):
    """`GET /api/v1/status`: the server and the caller's sessions now."""

    version: str
    uptime_s: float
    runtime: str
    database: DatabaseStatus
    sessions: SessionCounts
    queue: QueueCounts
    worktrees: WorktreeUsage


class AnalyticsTotals(BaseModel):
    sessions: int = Field(description="Sessions created in the range.")
    runs: int = Field(description="Runs created in the range.")
    succeeded: int
    failed: int
    interrupted: int
    errors: int = Field(description="Runs that ended failed, timed_out or error.")
    error_rate: float = Field(description="errors / ended runs (0 when none ended).")
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    average_session_seconds: float | None
    average_run_seconds: float | None


class AnalyticsPoint(BaseModel):
    start: datetime
    runs: int
    succeeded: int
    errors: int
    error_rate: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    busy_seconds: float
    utilization: float


class ProfileAnalytics(BaseModel):
    profile: str
    sessions: int
    runs: int
    busy_seconds: float
    utilization: float
    error_rate: float
    input_tokens: int
    output_tokens: int
    cost_usd: float


class Analytics(BaseModel):
    """`GET /api/v1/analytics`."""

    since: datetime
    until: datetime
    bucket: Bucket
    totals: AnalyticsTotals
    series: list[AnalyticsPoint]
    profiles: list[ProfileAnalytics]
    truncated: bool = Field(
        default=False,
        description=f"More than {MAX_ROWS} runs or sessions matched: the numbers cover the "
        "first of them only; narrow the range.",
    )


# ---- what the service reads besides the database ---------------------------------------------


class AgentCounts(Protocol):
    async def status_counts(self, owner_id: str | None = None) -> dict[str, int]: ...


class WorktreeListing(Protocol):
    """What `WorktreeService.list_worktrees` answers, as far as the dashboard reads it."""

    count: int
    total_size_bytes: int


class WorktreeLister(Protocol):
    async def list_worktrees(self, owner_id: str | None = None) -> Any: ...


@dataclass(frozen=True)
class Range:
    """A resolved analytics range: UTC bounds, the bucket size, and the buckets' bounds
    (`bounds[i]` to `bounds[i + 1]` is bucket i)."""

    since: datetime
    until: datetime
    bucket: Bucket
    bounds: list[datetime]


def resolve_range(
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket | None,
    *,
    now: datetime | None = None,
) -> Range:
    """The range an analytics request asks for, with the defaults filled in; `InvalidRequest`
    (422) says what to change when it is empty, reversed or has too many buckets."""
    try:
        until = until or now or utcnow()
        since = since or until - DEFAULT_RANGE
        start_utc, until_utc = since.astimezone(UTC), until.astimezone(UTC)
        if start_utc >= until_utc:
            raise InvalidRequest(
                f"since ({_iso(start_utc)}) must be before until ({_iso(until_utc)})"
            )
        chosen: Bucket = bucket or ("hour" if until_utc - start_utc <= HOURLY_UP_TO else "day")
        width = BUCKET_SECONDS[chosen]
        # Whole hours or days where the caller is (the offset `since` was given in).
        first = since.replace(minute=0, second=0, microsecond=0)
        if chosen == "day":
            first = first.replace(hour=0)
        first_utc = first.astimezone(UTC)
        count = math.ceil((until_utc - first_utc).total_seconds() / width)
        if count > MAX_BUCKETS:
            fix = "shorten the range" + (" or use bucket=day" if chosen == "hour" else "")
            raise InvalidRequest(
                f"the range from since to until has {count} {chosen} buckets, more than the "
                f"{MAX_BUCKETS} one answer holds; {fix}"
            )
        step = timedelta(seconds=width)
        bounds = [start_utc] + [first_utc + step * i for i in range(1, count)] + [until_utc]
    except OverflowError:
        raise InvalidRequest(
            "since and until (and the 7-day default range before until) must lie between the "
            "years 1 and 9999"
        ) from None
    return Range(since=start_utc, until=until_utc, bucket=chosen, bounds=bounds)


# ---- the service ------------------------------------------------------------------------------


class AnalyticsService:
    """Reads the dashboard's status and analytics from the agents and runs tables."""

    def __init__(
        self,
        db: Database,
        *,
        agents: AgentCounts,
        worktrees: WorktreeLister,
        max_concurrent: int,
        version: str,
        runtime: str,
        started_at: float | None = None,
    ) -> None:
        self.db = db
        self.agents = agents
        self.max_concurrent = max_concurrent
        self.version = version
        self.runtime = runtime
        self.started_at = time.monotonic() if started_at is None else started_at
        self.worktree_usage = WorktreeUsageCache(worktrees)

    # ---- status ----------------------------------------------------------------------------

    async def status(self, owner_id: str | None) -> DashboardStatus:
        """The server now; the session, run and worktree numbers are `owner_id`'s (every
        owner's for None)."""
        database = await self.check_database()
        sessions = SessionCounts(
            active=0, provisioning=0, running=0, idle=0, queued=0, stopped=0, failed=0, total=0
        )
        queue = QueueCounts(queued_runs=0, running_runs=0, max_concurrent=self.max_concurrent)
        if database.ok:
            try:
                sessions = await self.session_counts(owner_id)
                queue = await self.queue_counts(owner_id)
            except Exception:
                log.exception("status: the database did not answer")
                database = database.model_copy(update={"ok": False})
        return DashboardStatus(
            version=self.version,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            runtime=self.runtime,
            database=database,
            sessions=sessions,
            queue=queue,
            worktrees=await self.worktree_usage.get(owner_id),
        )

    async def check_database(self) -> DatabaseStatus:
        began = time.perf_counter()
        try:
            await self.db.ping()
            ok = True
        except Exception:
            log.exception("status: the database did not answer")
            ok = False
        latency = round((time.perf_counter() - began) * 1000, 3)
        return DatabaseStatus(backend=self.db.backend, ok=ok, latency_ms=latency)

    async def session_counts(self, owner_id: str | None) -> SessionCounts:
        """Live sessions by status, as `GET /sessions?status=` counts them."""
        counts = await self.agents.status_counts(owner_id)
        waiting = (
            select(func.count())
            .select_from(AgentRow)
            .where(
                AgentRow.deleted_at.is_(None),
                AgentRow.status == "ready",
                exists().where(RunRow.agent_id == AgentRow.id, RunRow.status == "queued"),
            )
        )
        if owner_id is not None:
            waiting = waiting.where(AgentRow.owner_id == owner_id)
        async with self.db.read() as session:
            queued = int(await session.scalar(waiting) or 0)
        provisioning, running = counts.get("provisioning", 0), counts.get("running", 0)
        return SessionCounts(
            active=provisioning + running + queued,
            provisioning=provisioning,
            running=running,
            idle=max(0, counts.get("ready", 0) - queued),
            queued=queued,
            stopped=counts.get("stopped", 0),
            failed=counts.get("failed", 0),
            total=counts.get("total", 0),
        )

    async def queue_counts(self, owner_id: str | None) -> QueueCounts:
        query = (
            select(RunRow.status, func.count())
            .where(RunRow.status.in_(("queued", "running")))
            .group_by(RunRow.status)
        )
        if owner_id is not None:
            query = query.where(RunRow.owner_id == owner_id)
        async with self.db.read() as session:
            counts = {status: int(n) for status, n in await session.execute(query)}
        return QueueCounts(
            queued_runs=counts.get("queued", 0),
            running_runs=counts.get("running", 0),
            max_concurrent=self.max_concurrent,
        )

    # ---- analytics -------------------------------------------------------------------------

    async def analytics(
        self,
        owner_id: str | None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: Bucket | None = None,
        now: datetime | None = None,
    ) -> Analytics:
        """Totals, a series of buckets and a line per profile over the range (the last 7 days
        by default), of `owner_id`'s sessions (every owner's for None)."""
        now = now or utcnow()
        span = resolve_range(since, until, bucket, now=now)
        runs, sessions, truncated = await self._read(owner_id, span)
        return _aggregate(span, runs, sessions, now=now, truncated=truncated)

    async def _read(
        self, owner_id: str | None, span: Range
    ) -> tuple[list[_Run], list[_Session], bool]:
        run_query = (
            select(
                RunRow.status,
                RunRow.created_at,
                RunRow.started_at,
                RunRow.finished_at,
                RunRow.usage,
                AgentRow.profile,
            )
            .join(AgentRow, AgentRow.id == RunRow.agent_id)
            .where(
                or_(
                    and_(RunRow.created_at >= span.since, RunRow.created_at < span.until),
                    # Created earlier, busy during the range.
                    and_(
                        RunRow.started_at.is_not(None),
                        RunRow.started_at < span.until,
                        or_(RunRow.finished_at.is_(None), RunRow.finished_at > span.since),
                    ),
                )
            )
            # Past the cap, the newest are kept (ids grow with time).
            .order_by(RunRow.id.desc())
            .limit(MAX_ROWS + 1)
        )
        last_finish = (
            select(func.max(RunRow.finished_at))
            .where(RunRow.agent_id == AgentRow.id)
            .scalar_subquery()
        )
        session_query = (
            select(
                AgentRow.profile,
                AgentRow.created_at,
                AgentRow.updated_at,
                AgentRow.deleted_at,
                last_finish,
            )
            .where(
                AgentRow.created_at < span.until,
                or_(AgentRow.deleted_at.is_(None), AgentRow.deleted_at > span.since),
            )
            .order_by(AgentRow.id.desc())
            .limit(MAX_ROWS + 1)
        )
        if owner_id is not None:
            run_query = run_query.where(RunRow.owner_id == owner_id)
            session_query = session_query.where(AgentRow.owner_id == owner_id)
        async with self.db.read() as session:
            run_rows = (await session.execute(run_query)).all()
            session_rows = (await session.execute(session_query)).all()
        truncated = len(run_rows) > MAX_ROWS or len(session_rows) > MAX_ROWS
        runs = [
            _Run(
                profile=profile,
                status=status,
                created_at=created,
                started_at=started,
                finished_at=finished,
                usage=usage if isinstance(usage, dict) else {},
            )
            for status, created, started, finished, usage, profile in run_rows[:MAX_ROWS]
        ]
        sessions = [
            _Session(
                profile=profile,
                created_at=created,
                updated_at=updated,
                deleted_at=deleted,
                last_finished_at=_aware(last),
            )
            for profile, created, updated, deleted, last in session_rows[:MAX_ROWS]
        ]
        return runs, sessions, truncated


class WorktreeUsageCache:
    """Worktree count and disk use per owner, measured (in a thread, by the worktrees service)
    at most every `WORKTREE_CACHE_SECONDS`, so the dashboard can poll its status cheaply."""

    def __init__(self, worktrees: WorktreeLister, ttl: float = WORKTREE_CACHE_SECONDS) -> None:
        self.worktrees = worktrees
        self.ttl = ttl
        self._cache: dict[str | None, tuple[float, WorktreeUsage]] = {}
        self._lock = asyncio.Lock()

    async def get(self, owner_id: str | None) -> WorktreeUsage:
        cached = self._fresh(owner_id)
        if cached is not None:
            return cached
        # One measurement at a time: requests arriving meanwhile get its result.
        async with self._lock:
            cached = self._fresh(owner_id)
            if cached is not None:
                return cached
            try:
                listing: WorktreeListing = await self.worktrees.list_worktrees(owner_id)
                usage = WorktreeUsage(count=listing.count, disk_bytes=listing.total_size_bytes)
            except Exception:
                log.exception("status: the worktrees could not be measured")
                return WorktreeUsage(count=0, disk_bytes=0)
            if len(self._cache) >= _WORKTREE_CACHE_LIMIT:
                self._cache.clear()
            self._cache[owner_id] = (time.monotonic(), usage)
            return usage

    def _fresh(self, owner_id: str | None) -> WorktreeUsage | None:
        cached = self._cache.get(owner_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        return None


# ---- aggregation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    profile: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    usage: dict[str, Any]


@dataclass(frozen=True)
class _Session:
    profile: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    last_finished_at: datetime | None


@dataclass
class _Tally:
    """Counters for the runs created in one bucket, one profile, or the whole range."""

    runs: int = 0
    ended: int = 0
    succeeded: int = 0
    failed: int = 0
    interrupted: int = 0
    errors: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    cost_usd: float = 0.0
    busy_seconds: float = 0.0

    def add(self, run: _Run) -> None:
        self.runs += 1
        self.ended += run.status in ENDED
        self.succeeded += run.status == "succeeded"
        self.failed += run.status == "failed"
        self.interrupted += run.status == "interrupted"
        self.errors += run.status in ERRORS
        for name in _TOKENS:
            self.tokens[name] += _int(run.usage.get(name))
        self.cost_usd += _float(run.usage.get("cost_usd"))

    @property
    def error_rate(self) -> float:
        return round(self.errors / self.ended, 4) if self.ended else 0.0


def _aggregate(
    span: Range,
    runs: Sequence[_Run],
    sessions: Sequence[_Session],
    *,
    now: datetime,
    truncated: bool,
) -> Analytics:
    bounds = span.bounds
    buckets = len(bounds) - 1
    per_bucket = [_Tally() for _ in range(buckets)]
    per_profile: dict[str, _Tally] = {}
    total = _Tally()
    run_seconds: list[float] = []

    def index_of(moment: datetime) -> int:
        return min(max(bisect_right(bounds, moment) - 1, 0), buckets - 1)

    for run in runs:
        profile = per_profile.setdefault(run.profile, _Tally())
        if span.since <= run.created_at < span.until:
            for tally in (per_bucket[index_of(run.created_at)], profile, total):
                tally.add(run)
            if run.started_at is not None and run.finished_at is not None:
                run_seconds.append((run.finished_at - run.started_at).total_seconds())
        if run.started_at is None:
            continue
        begin = max(run.started_at, span.since)
        end = min(run.finished_at or now, span.until)
        if end <= begin:
            continue
        profile.busy_seconds += (end - begin).total_seconds()
        total.busy_seconds += (end - begin).total_seconds()
        for i in range(index_of(begin), buckets):
            if bounds[i] >= end:
                break
            overlap = min(end, bounds[i + 1]) - max(begin, bounds[i])
            per_bucket[i].busy_seconds += max(0.0, overlap.total_seconds())

    # Sessions that existed during each bucket (a difference array: a session adds one from
    # the bucket it appeared in to the one it was deleted in), and per profile the seconds
    # they existed in the range.
    alive = [0] * (buckets + 1)
    profile_sessions: dict[str, int] = {}
    profile_seconds: dict[str, float] = {}
    session_seconds: list[float] = []
    for item in sessions:
        gone = item.deleted_at or span.until
        begin, end = max(item.created_at, span.since), min(gone, span.until)
        if end > begin:
            alive[index_of(begin)] += 1
            alive[index_of(end - timedelta(microseconds=1)) + 1] -= 1
            profile_seconds[item.profile] = (
                profile_seconds.get(item.profile, 0.0) + (end - begin).total_seconds()
            )
        if span.since <= item.created_at < span.until:
            profile_sessions[item.profile] = profile_sessions.get(item.profile, 0) + 1
            last = item.last_finished_at or item.updated_at
            session_seconds.append(max(0.0, (last - item.created_at).total_seconds()))

    series = []
    existing = 0
    for i, tally in enumerate(per_bucket):
        existing += alive[i]
        capacity = (bounds[i + 1] - bounds[i]).total_seconds() * existing
        series.append(
            AnalyticsPoint(
                start=bounds[i],
                runs=tally.runs,
                succeeded=tally.succeeded,
                errors=tally.errors,
                error_rate=tally.error_rate,
                input_tokens=tally.tokens["input_tokens"],
                output_tokens=tally.tokens["output_tokens"],
                cost_usd=round(tally.cost_usd, 6),
                busy_seconds=round(tally.busy_seconds, 3),
                utilization=_ratio(tally.busy_seconds, capacity),
            )
        )

    profiles = []
    for name in set(per_profile) | set(profile_sessions) | set(profile_seconds):
        tally = per_profile.get(name) or _Tally()
        profiles.append(
            ProfileAnalytics(
                profile=name,
                sessions=profile_sessions.get(name, 0),
                runs=tally.runs,
                busy_seconds=round(tally.busy_seconds, 3),
                utilization=_ratio(tally.busy_seconds, profile_seconds.get(name, 0.0)),
                error_rate=tally.error_rate,
                input_tokens=tally.tokens["input_tokens"],
                output_tokens=tally.tokens["output_tokens"],
                cost_usd=round(tally.cost_usd, 6),
            )
        )
    profiles.sort(key=lambda p: (-p.runs, -p.sessions, p.profile))

    return Analytics(
        since=span.since,
        until=span.until,
        bucket=span.bucket,
        totals=AnalyticsTotals(
            sessions=sum(profile_sessions.values()),
            runs=total.runs,
            succeeded=total.succeeded,
            failed=total.failed,
            interrupted=total.interrupted,
            errors=total.errors,
            error_rate=total.error_rate,
            input_tokens=total.tokens["input_tokens"],
            output_tokens=total.tokens["output_tokens"],
            cache_read_tokens=total.tokens["cache_read_tokens"],
            cache_write_tokens=total.tokens["cache_write_tokens"],
            cost_usd=round(total.cost_usd, 6),
            average_session_seconds=_mean(session_seconds),
            average_run_seconds=_mean(run_seconds),
        ),
        series=series,
        profiles=profiles,
        truncated=truncated,
    )


def _ratio(part: float, whole: float) -> float:
    return round(min(1.0, part / whole), 4) if whole > 0 else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _int(value: object) -> int:
    # `usage` is what an executor reported: anything but a number counts as nothing.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return int(value)


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _aware(value: datetime | str | None) -> datetime | None:
    """A `max(...)` of a UTC column: SQLite may hand it back as text, without the column's type."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
