from __future__ import annotations

import pytest

from gofiddle.ratelimit import ConcurrencyLimiter, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_burst_then_refill(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=3, clock=clock)  # one token per second
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(1.0)
    clock.advance(0.25)
    assert limiter.check("a") == pytest.approx(0.75)
    clock.advance(0.75)
    assert limiter.check("a") == 0.0
    assert limiter.check("a") == pytest.approx(1.0)


def test_denied_checks_do_not_consume(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=1, clock=clock)
    assert limiter.check("a") == 0.0
    for _ in range(10):
        assert limiter.check("a") > 0
    clock.advance(1.0)
    assert limiter.check("a") == 0.0


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=1, clock=clock)
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0


def test_refill_caps_at_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=2, clock=clock)
    limiter.check("a")
    clock.advance(3600)
    assert [limiter.check("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.check("a") > 0


def test_sustained_rate_over_a_minute(clock: FakeClock) -> None:
    limiter = RateLimiter(120, clock=clock)  # default burst: 10 s worth = 20
    assert limiter.burst == 20
    allowed = 0
    for _ in range(6000):  # a client hammering every 10 ms for a minute
        if limiter.check("a") == 0.0:
            allowed += 1
        clock.advance(0.01)
    assert 120 + 20 - 1 <= allowed <= 120 + 20 + 1


def test_retry_after_is_honest(clock: FakeClock) -> None:
    limiter = RateLimiter(30, burst=1, clock=clock)  # one token per 2 s
    limiter.check("a")
    wait = limiter.check("a")
    assert wait == pytest.approx(2.0)
    clock.advance(wait - 0.01)
    assert limiter.check("a") > 0
    clock.advance(0.01)
    assert limiter.check("a") == 0.0


def test_zero_rate_disables(clock: FakeClock) -> None:
    limiter = RateLimiter(0, clock=clock)
    assert all(limiter.check("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_idle_keys_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=5, clock=clock)  # full refill in 5 s
    for n in range(100):
        limiter.check(f"k{n}")
    assert len(limiter) == 100
    clock.advance(5.0)
    limiter.check("fresh")
    assert len(limiter) == 1


def test_recently_used_keys_are_kept(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=5, clock=clock)
    limiter.check("old")
    clock.advance(3.0)
    limiter.check("recent")
    limiter.check("old")  # touched again: moves to the back
    clock.advance(4.0)
    limiter.check("other")
    assert len(limiter) == 3
    clock.advance(1.5)  # "old" and "recent" now idle 5.5 s / 5.5 s
    limiter.check("other")
    assert len(limiter) == 1


def test_max_keys_evicts_least_recent(clock: FakeClock) -> None:
    limiter = RateLimiter(60, burst=1, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.check(key) == 0.0
    assert limiter.check("a") > 0  # "a" is now most recent
    assert limiter.check("d") == 0.0  # evicts "b"
    assert len(limiter) == 3
    assert limiter.check("a") > 0  # still remembered
    assert limiter.check("b") == 0.0  # forgotten: fresh bucket (lenient, never stricter)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(60, burst=0)
    with pytest.raises(ValueError):
        RateLimiter(60, max_keys=0)


def test_concurrency_limiter() -> None:
    limiter = ConcurrencyLimiter(2)
    assert limiter.acquire("a")
    assert limiter.acquire("a")
    assert not limiter.acquire("a")
    assert limiter.acquire("b")
    assert limiter.active("a") == 2
    limiter.release("a")
    assert limiter.acquire("a")
    limiter.release("a")
    limiter.release("a")
    limiter.release("b")
    assert limiter.active("a") == 0
    assert len(limiter) == 0  # nothing held, nothing remembered


def test_concurrency_unbalanced_release() -> None:
    limiter = ConcurrencyLimiter(1)
    with pytest.raises(ValueError):
        limiter.release("a")
    assert limiter.acquire("a")


def test_concurrency_unlimited() -> None:
    limiter = ConcurrencyLimiter(0)
    assert all(limiter.acquire("a") for _ in range(1000))
    assert limiter.active("a") == 1000
