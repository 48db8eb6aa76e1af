import random

import pytest

from tests.unit.fake_time import FakeTime
from transforms.core.ratelimit import AdaptiveRateLimiter, StallWatch


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


class TokenBucketServer:
    """A server-side per-key token bucket like Roboflow's (and the emulator's): 429 above ``rate``."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, None

    def answer(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def drive(limiter, t, seconds: float, accept) -> tuple[int, int]:
    """Send as fast as the limiter allows for ``seconds``; return (accepted, throttled)."""
    accepted = throttled = 0
    end = t.now + seconds
    while t.now < end:
        limiter.acquire()
        t.now += 0.0005  # the request's own cost
        if accept(t.now):
            accepted += 1
        else:
            throttled += 1
            limiter.on_throttled()
    return accepted, throttled


def test_unknown_limit_is_found_and_used_to_at_least_85_percent():
    t = FakeTime()
    server = TokenBucketServer(rate=100, burst=10)
    limiter = limiter_with(t, None, initial_rate=400.0)
    drive(limiter, t, 20, server.answer)  # converge
    accepted, throttled = drive(limiter, t, 60, server.answer)
    assert accepted / 60 >= 85
    assert throttled / (accepted + throttled) < 0.12  # few wasted calls once converged


def test_known_limit_with_no_faults_wastes_no_calls():
    t = FakeTime()
    server = TokenBucketServer(rate=100, burst=10)
    limiter = limiter_with(t, 100.0)
    accepted, throttled = drive(limiter, t, 60, server.answer)
    assert throttled == 0 and accepted >= 0.98 * 100 * 60


def test_random_429s_that_do_not_depend_on_the_rate_do_not_collapse_it():
    t = FakeTime()
    rng = random.Random(3)
    limiter = limiter_with(t, 100.0)
    accepted, throttled = drive(limiter, t, 120, lambda now: rng.random() >= 0.2)
    assert 0.15 < throttled / (accepted + throttled) < 0.25
    assert limiter.rate >= 90  # one cut at most, then the floor explains the 429s
    assert (accepted + throttled) / 120 >= 85


def test_a_real_limit_under_random_noise_is_still_found():
    t = FakeTime()
    rng = random.Random(4)
    server = TokenBucketServer(rate=60, burst=6)
    limiter = limiter_with(t, None, initial_rate=300.0)
    drive(limiter, t, 30, lambda now: server.answer(now) and rng.random() >= 0.1)
    accepted, _ = drive(limiter, t, 60, lambda now: server.answer(now) and rng.random() >= 0.1)
    assert accepted / 60 >= 0.85 * 60 * 0.9


def test_cut_is_proportional_to_the_excess_and_bounded_by_half():
    t = FakeTime()
    limiter = limiter_with(t, 100.0, min_samples=10)
    for i in range(20):
        limiter.acquire()
        if i < 16:
            limiter.on_throttled()
    t.now += 1.0
    limiter.acquire()  # closes the window: 80% throttled against a floor of 0
    assert limiter.rate == pytest.approx(50.0)


def test_rate_never_drops_below_min_rate():
    t = FakeTime()
    server = TokenBucketServer(rate=0.5, burst=1)  # a limit far below min_rate
    limiter = limiter_with(t, 10.0, min_rate=2.0, min_samples=5)
    for _ in range(60):
        drive(limiter, t, 1.0, server.answer)
        assert limiter.rate >= 2.0


def test_a_low_limit_far_below_the_starting_rate_is_found():
    t = FakeTime()
    server = TokenBucketServer(rate=20, burst=2)
    limiter = limiter_with(t, None, initial_rate=300.0)
    drive(limiter, t, 30, server.answer)
    accepted, throttled = drive(limiter, t, 60, server.answer)
    assert accepted / 60 >= 0.85 * 20
    assert 15 <= limiter.rate <= 30


def test_configured_rate_is_never_exceeded_even_after_recovering():
    t = FakeTime()
    server = TokenBucketServer(rate=30, burst=3)
    limiter = limiter_with(t, 50.0)
    drive(limiter, t, 30, server.answer)
    assert limiter.rate < 50
    drive(limiter, t, 120, lambda now: True)  # the limit went away: grow back, but only to 50
    assert limiter.rate == pytest.approx(50.0)


def test_few_requests_are_not_enough_to_judge():
    t = FakeTime()
    limiter = limiter_with(t, 100.0, min_samples=20)
    for _ in range(5):
        limiter.acquire()
        limiter.on_throttled()
    t.now += 2.0
    limiter.acquire()
    assert limiter.rate == 100.0


def test_callers_that_find_no_token_reserve_the_next_ones_and_sleep_once_each():
    """Twenty threads arriving together: each sleeps once, until its own slot; none polls."""
    t = FakeTime()
    limiter = limiter_with(t, 100.0, burst_seconds=0.0)
    limiter.acquire()  # the one token in the bucket
    recorded: list[float] = []

    def sleep(seconds: float) -> None:  # the callers arrive together: the clock does not move while they queue
        recorded.append(seconds)
        assert len(recorded) <= 20, "a caller slept again instead of waiting for its reserved slot"

    limiter._sleep = sleep
    for _ in range(20):
        limiter.acquire()
    assert recorded == pytest.approx([0.01 * k for k in range(1, 21)])


# ---- StallWatch -------------------------------------------------------------------------------


def test_stall_is_only_declared_after_the_timeout_without_any_success():
    t = FakeTime()
    watch = StallWatch(600.0, clock=t.clock)
    assert not watch.stalled()  # nothing sent yet
    for _ in range(59):
        watch.attempt()
        t.now += 10.0
    assert not watch.stalled()
    t.now += 11.0
    watch.attempt()
    assert watch.stalled()
    watch.success()
    assert not watch.stalled()


def test_one_success_anywhere_restarts_the_stall_clock():
    t = FakeTime()
    watch = StallWatch(60.0, clock=t.clock)
    for second in range(300):
        watch.attempt()
        if second % 50 == 0:
            watch.success()
        assert not watch.stalled()
        t.now += 1.0


def test_idle_time_between_imports_is_not_a_stall():
    t = FakeTime()
    watch = StallWatch(60.0, clock=t.clock)
    watch.attempt()
    watch.success()
    t.now += 3600.0
    watch.attempt()
    assert not watch.stalled()


def test_the_stall_is_reported_once():
    watch = StallWatch(1.0)
    assert [watch.first_report() for _ in range(3)] == [True, False, False]
