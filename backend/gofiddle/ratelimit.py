"""Per-client admission: token-bucket rates and concurrent-session caps.

Both are in-memory and per process; keys are whatever the caller chooses to
identify a client (normally the remote address).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConcurrencyLimiter", "RateLimiter", "TokenBucket"]

DEFAULT_MAX_KEYS = 100_000


@dataclass
class TokenBucket:
    """`tokens` as of `updated`; refilled lazily on each look."""

    tokens: float
    updated: float


class RateLimiter:
    """`rate_per_minute` sustained, up to `burst` back to back, per key.

    `burst` defaults to ten seconds' worth of the rate: a fresh client can
    click Run a few times quickly, yet the count in any one minute stays close
    to the configured rate (at most burst + rate). A rate of 0 or less
    disables the limit.

    Memory stays bounded: a bucket idle long enough to have refilled is
    indistinguishable from a new one, so it is dropped; beyond `max_keys` the
    least recently seen key is dropped too, which can only make the limiter
    more lenient to that key, never stricter.
    """

    def __init__(
        self,
        rate_per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_minute = rate_per_minute
        self.enabled = rate_per_minute > 0
        self._rate = rate_per_minute / 60.0  # tokens per second
        if burst is None:
            burst = max(1, math.ceil(rate_per_minute / 6))
        if self.enabled and burst < 1:
            raise ValueError("burst must be at least 1")
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # Seconds for an empty bucket to refill completely.
        self._refill_seconds = burst / self._rate if self.enabled else 0.0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        # The server uses this from the event loop, but routes may call it from
        # worker threads too; the critical section is tiny.
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0.0 if allowed (one token taken), else seconds until a token is due."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            self._forget_idle(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(tokens=float(self.burst), updated=now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self._rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self._rate

    def _forget_idle(self, now: float) -> None:
        # Buckets are ordered by last use, so the idle ones are at the front.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated < self._refill_seconds:
                break
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class ConcurrencyLimiter:
    """At most `max_per_key` concurrent holders per key; 0 or less means unlimited.

    Only keys currently held are remembered, so memory is bounded by the
    number of live holders.
    """

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            held = self._active.get(key, 0)
            if self.max_per_key > 0 and held >= self.max_per_key:
                return False
            self._active[key] = held + 1
            return True

    def release(self, key: str) -> None:
        """Give back one slot; releasing a key that holds none is a caller bug."""
        with self._lock:
            held = self._active.get(key, 0)
            if held <= 0:
                raise ValueError(f"release of {key!r} without a matching acquire")
            if held == 1:
                del self._active[key]
            else:
                self._active[key] = held - 1

    def active(self, key: str) -> int:
        with self._lock:
            return self._active.get(key, 0)

    def __len__(self) -> int:
        return len(self._active)
