"""The per-key token bucket."""

from __future__ import annotations

import pytest

from forge.api.ratelimit import RateLimiter


def test_a_key_gets_its_burst_then_waits_for_the_refill() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.wait_seconds("a", now=100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_seconds("a", now=100.0) == 1
    # Another key has its own bucket.
    assert limiter.wait_seconds("b", now=100.0) == 0
    # One request a second comes back.
    assert limiter.wait_seconds("a", now=101.0) == 0
    assert limiter.wait_seconds("a", now=101.0) == 1
    # The bucket never holds more than the burst.
    later = 10_000.0
    assert [limiter.wait_seconds("a", now=later) for _ in range(4)] == [0, 0, 0, 1]


def test_a_slow_rate_says_how_long_to_wait() -> None:
    limiter = RateLimiter(per_minute=2, burst=1)
    assert limiter.wait_seconds("a", now=0.0) == 0
    assert limiter.wait_seconds("a", now=0.0) == 30
    assert limiter.wait_seconds("a", now=20.0) == 10


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(per_minute=0, burst=1)
    assert all(limiter.wait_seconds("a", now=0.0) == 0 for _ in range(1000))


def test_peeking_takes_nothing_and_idle_buckets_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.peek_seconds("a", now=0.0) == 0  # no bucket yet
    assert [limiter.wait_seconds("a", now=0.0) for _ in range(2)] == [0, 0]
    assert limiter.peek_seconds("a", now=0.0) == 1
    assert limiter.peek_seconds("a", now=0.0) == 1  # peeking did not spend
    assert limiter.peek_seconds("a", now=1.0) == 0

    monkeypatch.setattr("forge.api.ratelimit.MAX_BUCKETS", 3)
    for key in ("b", "c", "d"):
        limiter.wait_seconds(key, now=100.0)
    # Full again by now: forgotten to make room, and a new key is as good as one of them.
    limiter.wait_seconds("e", now=200.0)
    assert len(limiter._buckets) <= 3
