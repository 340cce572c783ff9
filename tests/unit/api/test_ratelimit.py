"""The per-key token bucket."""

from __future__ import annotations

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
