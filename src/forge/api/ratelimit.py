"""A token bucket per API key: `per_minute` requests a minute on average, `burst` at once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Answers, per key, whether a request may go now, and if not how long to wait."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait_seconds(self, key: str, now: float | None = None) -> int:
        """0 if the request may go (and takes a token), else whole seconds until it may."""
        if not self.enabled:
            return 0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        # (Rounded first, so float error does not add a second.)
        return max(1, math.ceil(round((1.0 - bucket.tokens) / self.rate, 6)))
