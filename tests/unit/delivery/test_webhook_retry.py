"""The retry policy: schedule, jitter and Retry-After parsing."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from forge.delivery.retry import is_retryable_status, next_attempt_at, parse_retry_after


@pytest.mark.parametrize(("status", "retry"), [(408, True), (429, True), (500, True), (503, True),
                                               (599, True), (400, False), (404, False),
                                               (410, False), (301, False)])  # fmt: skip
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


def test_schedule_then_exhausted() -> None:
    schedule = [5.0, 300.0]
    assert next_attempt_at(1, 1000.0, schedule, 0.0) == 1005.0
    assert next_attempt_at(2, 1000.0, schedule, 0.0) == 1300.0
    assert next_attempt_at(3, 1000.0, schedule, 0.0) is None


def test_jitter_stays_in_bounds() -> None:
    rng = random.Random(7)
    waits = [next_attempt_at(1, 0.0, [100.0], 0.2, rng=rng) for _ in range(200)]
    assert all(w is not None and 80.0 <= w <= 120.0 for w in waits)
    assert len(set(waits)) > 100


def test_retry_after_wins_only_when_later_and_is_capped() -> None:
    assert next_attempt_at(1, 0.0, [5.0], 0.0, retry_after=60.0) == 60.0
    assert next_attempt_at(1, 0.0, [5.0], 0.0, retry_after=1.0) == 5.0
    assert next_attempt_at(1, 0.0, [5.0], 0.0, retry_after=9999.0, max_retry_after=120.0) == 120.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None
    assert parse_retry_after(None, now) is None
