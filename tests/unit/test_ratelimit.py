import pytest

from tests.unit.fake_time import FakeTime
from transforms.core.ratelimit import AdaptiveRateLimiter


class Slept(Exception):
    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


def first_wait_of(limiter: AdaptiveRateLimiter) -> float:
    """How long ``acquire`` would sleep right now (the fake sleep raises instead of sleeping)."""
    try:
        limiter.acquire()
    except Slept as exc:
        return exc.seconds
    return 0.0


def limiter_with(t: FakeTime, rate, **kwargs) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(rate, clock=t.clock, sleep=t.sleep, **kwargs)


def acquire_times(limiter: AdaptiveRateLimiter, t: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        limiter.acquire()
        times.append(t.now)
    return times


@pytest.mark.parametrize("rate", [50.0, 7.0, 333.0])
def test_fixed_rate_is_respected_over_many_acquires(rate):
    t = FakeTime()
    limiter = limiter_with(t, rate)
    n = 2000
    times = acquire_times(limiter, t, n)
    capacity = max(1.0, rate * 0.1)
    # Not faster than the rate: any window holds at most one burst plus rate * its length.
    for window in (1, 10, 100, n - 1):
        for i in range(0, n - window, max(1, window // 3)):
            assert window + 1 <= capacity + rate * (times[i + window] - times[i]) + 1e-6
    # Not slower either: the whole run takes about (n - 1) / rate.
    assert times[-1] - 1000.0 == pytest.approx((n - 1) / rate, rel=1e-3)
    assert limiter.rate == rate


def test_acquire_returns_the_seconds_it_waited():
    t = FakeTime()
    limiter = limiter_with(t, 4.0)
    assert limiter.acquire() == 0.0  # the first token is there at once
    before = len(t.sleeps)
    waited = limiter.acquire()
    assert waited == pytest.approx(0.25)
    assert waited == pytest.approx(sum(t.sleeps[before:]))


def test_idle_time_allows_only_a_small_burst():
    t = FakeTime()
    limiter = limiter_with(t, 100.0)  # burst_seconds=0.1 -> 10 tokens
    limiter.acquire()
    t.now += 60.0
    times = acquire_times(limiter, t, 30)
    immediate = sum(1 for x in times if x == times[0])
    assert immediate == 10
    assert times[-1] - times[0] == pytest.approx(20 / 100.0, rel=1e-3)


def test_retry_after_pauses_every_caller_until_the_same_moment():
    t = FakeTime()

    def refuse(seconds):
        raise Slept(seconds)

    limiter = AdaptiveRateLimiter(1000.0, clock=t.clock, sleep=refuse)
    limiter.on_throttled(5.0)
    pause_ends = t.now + 5.0
    for offset in (0.0, 1.0, 2.5, 4.9):  # callers arriving at different moments of the pause
        t.now = 1000.0 + offset
        assert first_wait_of(limiter) == pytest.approx(pause_ends - t.now)
    t.now = pause_ends + 0.01
    assert first_wait_of(limiter) == 0.0


def test_retry_after_pause_is_waited_out_by_acquire():
    t = FakeTime()
    limiter = limiter_with(t, 1000.0)
    limiter.on_throttled(3.0)
    waited = limiter.acquire()
    assert waited >= 3.0
    assert t.now >= 1003.0


def test_overlapping_retry_afters_extend_the_pause_and_count_once():
    t = FakeTime()
    limiter = limiter_with(t, 1000.0)
    limiter.on_throttled(3.0)  # paused until 1003
    t.now = 1000.5
    limiter.on_throttled(2.0)  # until 1002.5: inside the current pause
    t.now = 1001.0
    limiter.on_throttled(5.0)  # until 1006: extends by 3
    assert limiter.throttled_seconds == pytest.approx(6.0)
    assert limiter.throttle_events == 3
    limiter.acquire()
    assert t.now >= 1006.0


def test_429_without_retry_after_does_not_pause():
    t = FakeTime()
    limiter = limiter_with(t, 1000.0)
    limiter.on_throttled(None)
    limiter.on_throttled(0)
    assert limiter.throttled_seconds == 0.0
    assert limiter.throttle_events == 2


def test_429_lowers_the_rate_once_per_burst():
    t = FakeTime()
    limiter = limiter_with(t, 100.0)
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(85.0)
    for _ in range(20):  # the rest of the same burst of 429s
        limiter.on_throttled()
    assert limiter.rate == pytest.approx(85.0)
    t.now += 1.0  # a later burst
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(85.0 * 0.85)


def test_429_drains_the_bucket_so_the_next_caller_waits():
    t = FakeTime()
    limiter = limiter_with(t, 100.0)
    t.now += 10.0
    limiter.acquire()  # bucket refilled to 10 tokens, one taken
    limiter.on_throttled()
    before = t.now
    limiter.acquire()
    assert t.now - before == pytest.approx(1 / 85.0, rel=1e-3)


def test_429_arriving_after_the_request_latency_still_makes_the_next_caller_wait():
    t = FakeTime()
    limiter = limiter_with(t, 100.0)
    limiter.acquire()  # the request that will get the 429
    t.now += 0.2  # its round trip
    limiter.on_throttled()
    before = t.now
    limiter.acquire()
    assert t.now - before == pytest.approx(1 / 85.0, rel=1e-3)


def test_rate_never_drops_below_min_rate():
    t = FakeTime()
    limiter = limiter_with(t, 10.0, min_rate=2.0)
    for _ in range(100):
        t.now += 100.0
        limiter.on_throttled()
        assert limiter.rate >= 2.0
    assert limiter.rate == pytest.approx(2.0, abs=0.1)


def test_first_429_lowers_the_rate_whatever_the_clock_origin():
    t = FakeTime(start=0.0)
    limiter = limiter_with(t, 50.0)
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(50.0 * 0.85)


def test_rate_grows_back_while_requests_succeed_when_no_limit_is_configured():
    t = FakeTime()
    limiter = limiter_with(t, None, initial_rate=10.0)
    for _ in range(5):
        t.now += 100.0
        limiter.on_throttled()
    lowered = limiter.rate
    assert lowered == pytest.approx(10.0 * 0.85**5)
    acquire_times(limiter, t, 200)
    assert limiter.rate > lowered
    t.now += 600.0
    limiter.acquire()
    assert limiter.rate > 10.0  # searches above the initial guess when nothing pushes back


def test_configured_rate_is_never_exceeded_even_after_recovering():
    t = FakeTime()
    limiter = limiter_with(t, 20.0)
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(17.0)
    rates = []
    for _ in range(50):
        t.now += 30.0
        limiter.acquire()
        rates.append(limiter.rate)
    assert max(rates) <= 20.0
    assert rates[-1] == 20.0  # recovered to, but not past, the configured rate
    times = acquire_times(limiter, t, 500)
    assert times[-1] - times[0] >= (499 - limiter.capacity) / 20.0
