"""Circuit breaker on queue saturation: when the queue stays nearly full, new runs get a
quick type-check instead of a place in a queue they would mostly expire in."""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class SaturationBreaker:
    """closed --(saturated for `open_after` s)--> open --(`cooldown` s)--> half_open;
    half_open --(still saturated)--> open, --(queue below half the threshold)--> closed."""

    def __init__(self, *, capacity: int, saturation: float, open_after: float,
                 cooldown: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.threshold = max(1, int(capacity * saturation + 0.999999))
        self.open_after = open_after
        self.cooldown = cooldown
        self.clock = clock
        self.on_change = on_change
        self.state = CLOSED
        self._saturated_since: float | None = None
        self._opened_at = 0.0
        self.opened = 0  # times it opened, for logs and tests

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if state == OPEN:
                self.opened += 1
                self._opened_at = self.clock()
            if self.on_change is not None:
                self.on_change(state)

    def observe(self, queue_length: int) -> str:
        """Feed the current queue length; returns the state after it."""
        now = self.clock()
        saturated = queue_length >= self.threshold
        if saturated:
            if self._saturated_since is None:
                self._saturated_since = now
        else:
            self._saturated_since = None
        if self.state == CLOSED:
            if saturated and now - self._saturated_since >= self.open_after:  # type: ignore[operator]
                self._set(OPEN)
        elif self.state == OPEN:
            if now - self._opened_at >= self.cooldown:
                self._set(HALF_OPEN)
                return self.observe(queue_length)
        elif self.state == HALF_OPEN:
            if saturated:
                self._set(OPEN)
            elif queue_length <= self.threshold // 2:
                self._set(CLOSED)
        return self.state

    @property
    def degrading(self) -> bool:
        return self.state == OPEN
