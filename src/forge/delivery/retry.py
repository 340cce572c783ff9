"""When a failed delivery is tried again: the backoff schedule, jitter and `Retry-After`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

# Statuses that mean "not now": tried again later. Every other non-2xx answer is final.
RETRYABLE_STATUS_CODES = frozenset({408, 429}) | frozenset(range(500, 600))
# Statuses whose `Retry-After` is honoured.
RETRY_AFTER_STATUS_CODES = frozenset({429, 503})


def is_retryable_status(status_code: int) -> bool:
    """True for answers that ask to try again later (408, 429, 5xx)."""
    return status_code in RETRYABLE_STATUS_CODES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - now
    if seconds != seconds or seconds == float("inf"):  # NaN or infinity
        return None
    return max(0.0, seconds)


def next_attempt_at(
    attempts: int,
    now: float,
    schedule: Sequence[float],
    jitter: float,
    *,
    retry_after: float | None = None,
    max_retry_after: float = float("inf"),
    rng: random.Random | None = None,
) -> float | None:
    """When to try again after `attempts` failed attempts, or None when the schedule is used up.

    The wait is `schedule[attempts - 1]` times a random factor in [1 - jitter, 1 + jitter]. A
    `retry_after` (seconds, capped at `max_retry_after`) wins when it is later.
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    factor = (rng or random).uniform(1 - jitter, 1 + jitter) if jitter else 1.0
    wait = max(0.0, schedule[attempts - 1] * factor)
    if retry_after is not None:
        wait = max(wait, min(retry_after, max_retry_after))
    return now + wait
