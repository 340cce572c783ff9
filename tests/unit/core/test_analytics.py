"""AnalyticsService on SQLite and PostgreSQL, over rows inserted here: buckets, busy time split
across buckets, the utilization cap, error rates, averages, tokens and the range's rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from forge.core.analytics import AnalyticsService, WorktreeUsage, resolve_range
from forge.core.errors import InvalidRequest
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class _Agents:
    async def status_counts(self, owner_id: str | None = None) -> dict[str, int]:
        return {"ready": 2, "running": 1, "provisioning": 1, "total": 4}


class _Listing:
    def __init__(self, count: int) -> None:
        self.count = count
        self.total_size_bytes = 1000 * count


class _Worktrees:
    def __init__(self) -> None:
        self.calls = 0

    async def list_worktrees(self, owner_id: str | None = None) -> Any:
        self.calls += 1
        return _Listing(3)


def service(db: Database, worktrees: _Worktrees | None = None) -> AnalyticsService:
    return AnalyticsService(
        db,
        agents=_Agents(),
        worktrees=worktrees or _Worktrees(),
        max_concurrent=8,
        version="1.2.3",
        runtime="local",
    )


def usage(tokens_in: int, tokens_out: int, cost: float) -> dict[str, Any]:
    return {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cache_read_tokens": 5,
        "cache_write_tokens": 1,
        "cost_usd": cost,
    }


async def seed(db: Database) -> None:
    """Two of alice's sessions (profiles `coder` and `tests`) and one of bob's, with runs:

    | run | session | created | started-finished | status |
    | r1 | a1 coder | 01:00 | 01:00-01:30 | succeeded, 100/10 tokens, $0.5 |
    | r2 | a1 coder | 01:40 | 01:45-03:15 | failed (90 min across 3 hour buckets) |
    | r3 | a2 tests | 02:10 | 02:10-02:20 | interrupted |
    | r4 | a2 tests | 02:30 | 02:30-02:40 | timed_out |
    | r5 | a2 tests | 03:30 | never started | queued |
    | r0 | a1 coder | yesterday | 23:30 (day before)-00:30 | error: busy 30 min in range |
    | b1 | b1 coder (bob) | 01:00 | 01:00-02:00 | succeeded, 7/7 tokens |
    """
    async with db.write() as session:
        session.add_all(
            [
                AgentRow(
                    id="a1",
                    owner_id="alice",
                    profile="coder",
                    executor="command",
                    status="ready",
                    created_at=at(-2),
                    updated_at=at(4),
                ),
                AgentRow(
                    id="a2",
                    owner_id="alice",
                    profile="tests",
                    executor="command",
                    status="ready",
                    created_at=at(2),
                    updated_at=at(3),
                    deleted_at=at(3.5),
                ),
                AgentRow(
                    id="b1",
                    owner_id="bob",
                    profile="coder",
                    executor="command",
                    status="ready",
                    created_at=at(0.5),
                    updated_at=at(2),
                ),
            ]
        )
        await session.flush()

        def run(
            request_id: str,
            agent_id: str,
            status: str,
            created: float,
            started: float | None,
            finished: float | None,
            used: dict[str, Any] | None = None,
        ) -> RunRow:
            return RunRow(
                agent_id=agent_id,
                request_id=request_id,
                owner_id="bob" if agent_id == "b1" else "alice",
                prompt="p",
                body_hash="h",
                status=status,
                usage=used,
                created_at=at(created),
                started_at=at(started) if started is not None else None,
                finished_at=at(finished) if finished is not None else None,
            )

        session.add_all(
            [
                run("r0", "a1", "error", -0.6, -0.5, 0.5),
                run("r1", "a1", "succeeded", 1, 1, 1.5, usage(100, 10, 0.5)),
                run("r2", "a1", "failed", 1 + 40 / 60, 1.75, 3.25, usage(20, 2, 0.25)),
                run("r3", "a2", "interrupted", 2 + 10 / 60, 2 + 10 / 60, 2 + 20 / 60),
                run("r4", "a2", "timed_out", 2.5, 2.5, 2 + 40 / 60),
                run("r5", "a2", "queued", 3.5, None, None),
                run("b1", "b1", "succeeded", 1, 1, 2, usage(7, 7, 0.07)),
            ]
        )


async def test_totals_series_and_profiles_of_one_owner(db: Database) -> None:
    await seed(db)
    result = await service(db).analytics("alice", since=at(0), until=at(4), now=at(10))
    assert result.bucket == "hour"  # 4 h ≤ 48 h
    assert [p.start for p in result.series] == [at(h) for h in range(4)]
    totals = result.totals
    # r1..r5 (r0 was created before the range); bob's run is not alice's.
    assert totals.runs == 5
    assert (totals.succeeded, totals.failed, totals.interrupted) == (1, 1, 1)
    # failed + timed_out; interrupted is no error; the queued run has not ended.
    assert totals.errors == 2
    assert totals.error_rate == 0.5
    assert (totals.input_tokens, totals.output_tokens) == (120, 12)
    assert (totals.cache_read_tokens, totals.cache_write_tokens) == (10, 2)
    assert totals.cost_usd == pytest.approx(0.75)
    # Sessions created in the range: a2 only (a1 is older): 02:40 (its last run ended) - 02:00.
    assert totals.sessions == 1
    assert totals.average_session_seconds == 2400
    # r1 30 min, r2 90, r3 10, r4 10.
    assert totals.average_run_seconds == pytest.approx((30 + 90 + 10 + 10) * 60 / 4)

    hour = [(p.runs, p.succeeded, p.errors) for p in result.series]
    assert hour == [(0, 0, 0), (2, 1, 1), (2, 0, 1), (1, 0, 0)]
    assert result.series[1].error_rate == 0.5
    assert result.series[2].error_rate == 0.5  # r3 interrupted, r4 timed out
    assert result.series[3].error_rate == 0.0  # r5 still queued: nothing ended
    assert result.series[1].input_tokens == 120
    assert result.series[1].cost_usd == pytest.approx(0.75)

    # Busy time: r0 00:00-00:30; r1 01:00-01:30 and r2 01:45-03:15 split over three hours;
    # r3 and r4 10 minutes each in hour 2.
    busy = [p.busy_seconds for p in result.series]
    assert busy == [1800, 1800 + 900, 3600 + 1200, 900]
    # Hour 0 and 1: a1 alone exists; hour 2 and 3: a1 and a2 (deleted at 03:30).
    assert [p.utilization for p in result.series] == [
        0.5,
        0.75,
        round(4800 / 7200, 4),
        round(900 / 7200, 4),
    ]

    profiles = {p.profile: p for p in result.profiles}
    assert set(profiles) == {"coder", "tests"}
    coder, tests = profiles["coder"], profiles["tests"]
    assert (coder.sessions, coder.runs, coder.error_rate) == (0, 2, 0.5)
    assert coder.busy_seconds == 1800 + 1800 + 5400
    # a1 existed for the whole 4 h.
    assert coder.utilization == round(9000 / 14400, 4)
    assert (coder.input_tokens, coder.output_tokens) == (120, 12)
    assert (tests.sessions, tests.runs, tests.error_rate) == (1, 3, 0.5)
    # a2 existed 02:00-03:30; busy 20 min.
    assert tests.utilization == round(1200 / 5400, 4)
    assert [p.profile for p in result.profiles] == ["tests", "coder"]  # by runs


async def test_the_admin_sees_every_owner_and_buckets_are_whole_days(db: Database) -> None:
    await seed(db)
    everyone = await service(db).analytics(None, since=at(-24), until=at(24), bucket="day")
    assert everyone.bucket == "day"
    assert [p.start for p in everyone.series] == [at(-24), at(0)]
    assert everyone.totals.runs == 7
    assert everyone.totals.sessions == 3
    assert everyone.series[0].runs == 1  # r0
    bob = await service(db).analytics("bob", since=at(0), until=at(4), now=at(10))
    assert bob.totals.runs == 1 and bob.totals.input_tokens == 7
    assert [p.profile for p in bob.profiles] == ["coder"]


async def test_utilization_is_capped_and_a_running_run_is_busy_until_now(db: Database) -> None:
    async with db.write() as session:
        session.add(
            AgentRow(
                id="x1",
                owner_id="o",
                profile="p",
                executor="command",
                status="running",
                created_at=at(0.5),
                updated_at=at(0.5),
            )
        )
        await session.flush()
        # Two overlapping runs on one session (a replica's clock, a resend): 2 h of busy time
        # in one session-hour is still full, not 200 %.
        for n in (1, 2):
            session.add(
                RunRow(
                    agent_id="x1", request_id=f"r{n}", owner_id="o", prompt="p",
                    body_hash="h", status="running", created_at=at(0.5), started_at=at(0.5),
                )
            )  # fmt: skip
    result = await service(db).analytics("o", since=at(0), until=at(3), now=at(2.25))
    assert [p.busy_seconds for p in result.series] == [3600, 7200, 1800]
    assert [p.utilization for p in result.series] == [1.0, 1.0, 0.5]
    assert result.totals.error_rate == 0.0 and result.totals.average_run_seconds is None
    # The session's last run has not finished: updated_at counts.
    assert result.totals.average_session_seconds == 0.0


async def test_an_empty_range_has_every_bucket_with_zeros(db: Database) -> None:
    result = await service(db).analytics(None, since=at(0), until=at(5), bucket="hour")
    assert len(result.series) == 5
    assert all(p.runs == 0 and p.utilization == 0 for p in result.series)
    assert result.totals.average_session_seconds is None
    assert result.profiles == []


async def test_status_counts_sessions_queue_and_cached_worktrees(db: Database) -> None:
    async with db.write() as session:
        for agent_id, status in (("s1", "ready"), ("s2", "ready")):
            session.add(
                AgentRow(id=agent_id, owner_id="o", profile="p", executor="command", status=status)
            )
        await session.flush()
        session.add(
            RunRow(
                agent_id="s1", request_id="q", owner_id="o", prompt="p", body_hash="h",
                status="queued",
            )
        )  # fmt: skip
    worktrees = _Worktrees()
    analytics = service(db, worktrees)
    status = await analytics.status("o")
    # From `_Agents`: 2 ready (1 with a queued run), 1 running, 1 provisioning.
    assert status.sessions.model_dump() == {
        "active": 3,
        "provisioning": 1,
        "running": 1,
        "idle": 1,
        "queued": 1,
        "stopped": 0,
        "failed": 0,
        "total": 4,
    }
    assert status.queue.model_dump() == {"queued_runs": 1, "running_runs": 0, "max_concurrent": 8}
    assert status.database.ok and status.database.backend in ("sqlite", "postgresql")
    assert status.worktrees == WorktreeUsage(count=3, disk_bytes=3000)
    await analytics.status("o")
    assert worktrees.calls == 1  # measured once, then cached


def test_the_range_defaults_and_its_refusals() -> None:
    now = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
    week = resolve_range(None, None, None, now=now)
    assert (week.since, week.until, week.bucket) == (now - timedelta(days=7), now, "day")
    assert len(week.bounds) - 1 == 8  # 7 days from 06:30: eight calendar days
    short = resolve_range(now - timedelta(hours=48), None, None, now=now)
    assert short.bucket == "hour" and len(short.bounds) - 1 == 49  # a part-hour at each end
    # Days where the caller is: midnight at +02:00.
    local = resolve_range(
        datetime(2026, 11, 20, 12, 0, tzinfo=timezone(timedelta(hours=2))), now, "day"
    )
    assert local.bounds[1] == datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="must be before until"):
        resolve_range(now, now, None)
    with pytest.raises(InvalidRequest, match="bucket=day"):
        resolve_range(now - timedelta(days=30), now, "hour")
    with pytest.raises(InvalidRequest, match="shorten the range"):
        resolve_range(now - timedelta(days=500), now, "day")
    with pytest.raises(InvalidRequest, match="years 1 and 9999"):
        resolve_range(None, datetime(1, 1, 2, tzinfo=UTC), None)
