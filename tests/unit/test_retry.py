import email.utils
import random
import time

import pytest

from tests.unit.fake_time import FakeTime
from transforms.core import retry
from transforms.core.retry import (
    PermanentError,
    RateLimited,
    RetryPolicy,
    TransientError,
    call_with_retries,
    parse_retry_after,
)


@pytest.fixture(autouse=True)
def seeded_jitter(monkeypatch):
    monkeypatch.setattr(retry, "random", random.Random(7))


class Script:
    """A callable that raises the given exceptions in turn, then returns ``result``."""

    def __init__(self, *failures, result="ok", clock: FakeTime | None = None, duration: float = 0.0):
        self.failures = list(failures)
        self.result = result
        self.calls = 0
        self.clock = clock
        self.duration = duration

    def __call__(self):
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.duration
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def transient(kind="http_503", retry_after=None):
    return TransientError(kind, f"{kind} from server", retry_after=retry_after, status=503)


# ---- RetryPolicy.delay ------------------------------------------------------------------------


def test_delay_is_full_jitter_within_the_exponential_cap():
    policy = RetryPolicy(base_delay=0.5, max_delay=15.0)
    for attempt in range(10):
        cap = min(15.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt, None) for _ in range(300)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap  # really spread over the range, not a constant
        assert min(delays) < 0.2 * cap


def test_delay_waits_at_least_retry_after():
    policy = RetryPolicy(base_delay=0.5, max_delay=15.0)
    assert all(policy.delay(0, 7.5) >= 7.5 for _ in range(100))
    assert all(policy.delay(0, 0.0) >= 0.0 for _ in range(10))


def test_delay_caps_an_absurd_retry_after():
    policy = RetryPolicy(base_delay=0.5, max_delay=15.0)
    assert policy.delay(0, 86400.0) == 60.0


# ---- call_with_retries ------------------------------------------------------------------------


def test_returns_at_once_without_sleeping_when_the_call_succeeds():
    t = FakeTime()
    fn = Script()
    assert call_with_retries(fn, RetryPolicy(), sleep=t.sleep, clock=t.clock) == "ok"
    assert fn.calls == 1 and t.sleeps == []


def test_retries_transient_errors_until_success():
    t = FakeTime()
    seen = []
    fn = Script(transient(), transient("reset"), result={"image": {}})
    result = call_with_retries(
        fn, RetryPolicy(max_attempts=5), sleep=t.sleep, clock=t.clock,
        on_retry=lambda exc, attempt, delay: seen.append((exc.kind, attempt, delay)),
    )
    assert result == {"image": {}}
    assert fn.calls == 3
    assert [(k, a) for k, a, _ in seen] == [("http_503", 1), ("reset", 2)]
    assert [d for _, _, d in seen] == t.sleeps  # the delay reported is the delay slept


def test_permanent_error_is_raised_at_once_with_attempts():
    t = FakeTime()
    error = PermanentError("http_404", "not found", status=404)
    fn = Script(error)
    with pytest.raises(PermanentError) as info:
        call_with_retries(fn, RetryPolicy(), sleep=t.sleep, clock=t.clock)
    assert info.value is error
    assert info.value.attempts == 1
    assert fn.calls == 1 and t.sleeps == []


def test_unexpected_exception_is_not_retried():
    t = FakeTime()
    fn = Script(transient(), KeyError("boom"))
    with pytest.raises(KeyError) as info:
        call_with_retries(fn, RetryPolicy(), sleep=t.sleep, clock=t.clock)
    assert info.value.attempts == 2
    assert fn.calls == 2 and len(t.sleeps) == 1


def test_gives_up_after_max_attempts_with_the_last_error():
    t = FakeTime()
    errors = [transient(f"e{i}") for i in range(10)]
    fn = Script(*errors)
    with pytest.raises(TransientError) as info:
        call_with_retries(fn, RetryPolicy(max_attempts=4, max_elapsed=1e9), sleep=t.sleep, clock=t.clock)
    assert info.value is errors[3]
    assert info.value.attempts == 4
    assert fn.calls == 4 and len(t.sleeps) == 3


def test_single_attempt_policy_never_sleeps():
    t = FakeTime()
    with pytest.raises(TransientError) as info:
        call_with_retries(Script(transient()), RetryPolicy(max_attempts=1), sleep=t.sleep, clock=t.clock)
    assert info.value.attempts == 1 and t.sleeps == []


def test_gives_up_before_the_elapsed_budget_is_exceeded():
    """A dead service ends in a dead letter within ``max_elapsed``, never a hang."""
    t = FakeTime()
    start = t.now
    fn = Script(*[transient(retry_after=4.0) for _ in range(100)])
    with pytest.raises(TransientError) as info:
        call_with_retries(fn, RetryPolicy(max_attempts=100, max_elapsed=20.0), sleep=t.sleep, clock=t.clock)
    assert t.now - start <= 20.0
    assert all(s >= 4.0 for s in t.sleeps)
    assert info.value.attempts == fn.calls == len(t.sleeps) + 1
    assert 3 <= fn.calls <= 6


def test_time_spent_inside_the_call_counts_against_the_budget():
    t = FakeTime()
    fn = Script(*[transient() for _ in range(100)], clock=t, duration=9.0)
    with pytest.raises(TransientError):
        call_with_retries(fn, RetryPolicy(max_attempts=100, max_elapsed=30.0), sleep=t.sleep, clock=t.clock)
    assert fn.calls <= 4
    assert t.now - 5000.0 <= 30.0 + 9.0  # at most the last call runs past the budget


def test_retry_after_is_honoured_between_attempts():
    t = FakeTime()
    fn = Script(transient("http_429", retry_after=12.0))
    assert call_with_retries(fn, RetryPolicy(max_delay=15.0), sleep=t.sleep, clock=t.clock) == "ok"
    assert len(t.sleeps) == 1 and t.sleeps[0] >= 12.0


def test_retry_after_beyond_the_budget_gives_up_without_sleeping():
    t = FakeTime()
    fn = Script(transient("http_429", retry_after=50.0))
    with pytest.raises(TransientError):
        call_with_retries(fn, RetryPolicy(max_delay=15.0, max_elapsed=30.0), sleep=t.sleep, clock=t.clock)
    assert t.sleeps == []


def test_outage_shorter_than_the_budget_is_waited_out():
    t = FakeTime()
    start = t.now

    def flaky():
        if t.now - start < 20.0:
            raise transient()
        return "back"

    assert call_with_retries(flaky, RetryPolicy(max_attempts=50, max_elapsed=120.0),
                             sleep=t.sleep, clock=t.clock) == "back"
    assert 20.0 <= t.now - start <= 120.0


# ---- 429s: waited out, outside the budget ------------------------------------------------------


def limited(retry_after=None):
    return RateLimited("image_details: 429 Rate limit exceeded", retry_after=retry_after)


def test_429s_beyond_the_attempt_budget_are_waited_out():
    t = FakeTime()
    fn = Script(*[limited() for _ in range(30)])
    assert call_with_retries(fn, RetryPolicy(max_attempts=3), sleep=t.sleep, clock=t.clock) == "ok"
    assert fn.calls == 31 and len(t.sleeps) == 30


def test_time_waiting_out_429s_does_not_use_the_elapsed_budget_of_other_faults():
    t = FakeTime()
    fn = Script(*[limited(retry_after=10.0) for _ in range(20)], transient(), transient())
    assert call_with_retries(fn, RetryPolicy(max_attempts=5, max_elapsed=30.0),
                             sleep=t.sleep, clock=t.clock) == "ok"
    assert t.now - 1000.0 > 200.0


def test_other_faults_between_429s_still_give_up_after_their_budget():
    t = FakeTime()
    failures = [e for _ in range(10) for e in (limited(), transient())]
    fn = Script(*failures)
    with pytest.raises(TransientError) as info:
        call_with_retries(fn, RetryPolicy(max_attempts=3, max_elapsed=1e9), sleep=t.sleep, clock=t.clock)
    assert info.value.kind == "http_503" and fn.calls == 6


def test_a_stalled_run_gives_up_on_the_429_without_sleeping_again():
    t = FakeTime()
    checks = []
    fn = Script(*[limited() for _ in range(10)])

    def stalled():
        checks.append(fn.calls)
        return fn.calls >= 4

    with pytest.raises(RateLimited) as info:
        call_with_retries(fn, RetryPolicy(max_attempts=2), sleep=t.sleep, clock=t.clock, stalled=stalled)
    assert info.value.attempts == 4 and len(t.sleeps) == 3 and checks == [1, 2, 3, 4]


def test_threads_told_the_same_retry_after_come_back_spread_out():
    policy = RetryPolicy()
    delays = sorted(policy.rate_limit_delay(0, 1.0) for _ in range(50))
    assert delays[0] >= 1.0  # Retry-After is honoured
    assert delays[-1] - delays[0] > 0.3  # spread over the jitter, not one herd
    assert len({round(d, 3) for d in delays}) > 40  # hardly two in the same millisecond


def test_429_without_retry_after_backs_off_exponentially_up_to_the_cap():
    policy = RetryPolicy(base_delay=0.5, max_delay=15.0)
    assert max(policy.rate_limit_delay(0, None) for _ in range(200)) <= 0.5
    late = [policy.rate_limit_delay(40, None) for _ in range(200)]
    assert max(late) <= 15.0 and max(late) > 10.0


# ---- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0), ("120", 120.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = 1445412470.0  # 2015-10-21 07:27:50 UTC
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(10.0)


def test_parse_retry_after_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0 + 3600) == 0.0


def test_parse_retry_after_http_date_uses_the_wall_clock_by_default():
    soon = email.utils.formatdate(usegmt=True, timeval=time.time() + 30)
    assert 25.0 <= parse_retry_after(soon) <= 31.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Wed, 99 Foo 2015", "1s"])
def test_parse_retry_after_unreadable_is_none(value):
    assert parse_retry_after(value) is None
