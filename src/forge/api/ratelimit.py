"""A token bucket per API key: `per_minute` requests a minute on average, `burst` at once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

# Buckets kept at most; beyond, those refilled to the brim are forgotten (they are as new).
MAX_BUCKETS = 10_000


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

    def _forget_full(self, now: float) -> None:
        refill = self.burst / self.rate if self.rate else 0.0
        for key, bucket in list(self._buckets.items()):
            if now - bucket.at >= refill:
                del self._buckets[key]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def peek_seconds(self, key: str, now: float | None = None) -> int:
        """Like `wait_seconds`, but takes no token: 0 if a request could go now."""
        bucket = self._buckets.get(key)
        if not self.enabled or bucket is None:
            return 0
        now = time.monotonic() if now is None else now
        tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        if tokens >= 1.0:
            return 0
        return max(1, math.ceil(round((1.0 - tokens) / self.rate, 6)))

    def wait_seconds(self, key: str, now: float | None = None) -> int:
        """0 if the request may go (and takes a token), else whole seconds until it may."""
        if not self.enabled:
            return 0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        # (Rounded first, so float error does not add a second.)
        return max(1, math.ceil(round((1.0 - bucket.tokens) / self.rate, 6)))
