"""A token bucket shared by every thread of a worker process that finds and holds Roboflow's limit.

Roboflow publishes no limit and sends no rate-limit headers; a 429 is all we learn. With ``rate``
given (``--roboflow_rate_limit``, divided among worker processes) the bucket starts there and never
exceeds it; with ``rate=None`` it starts at ``initial_rate`` and searches.

Which idea, and why. TCP's AIMD is the base: grow while answers succeed, cut on congestion, and
several senders on one bottleneck converge without knowing of each other (each process of a job
runs its own bucket against the key's one limit, and cuts to its own part of what got through, so
the job's total converges to the key's limit with no static division; ``--roboflow_rate_limit``
stays an upper bound). Google SRE's client-side throttling (Beam's
``AdaptiveThrottler``) rejects requests locally in proportion to recent failures: it protects a
struggling backend but does not pace, so against a token bucket it keeps sending bursts that are
429'd. Retry tokens (gRPC, AWS SDK) cap retries, which is the opposite of what a rate-limit wait needs
(a 429 must be waited out, see ``retry.py``). So AIMD, with three changes a gateway's limit allows:

* **Cut to the measured limit, not by half.** Over a token bucket, the gateway lets through exactly
  its rate; a round (``window`` seconds and ``min_samples`` answers) with a share s of 429s at send
  rate r says the limit is about r(1-s). The cut goes just under that (``margin``), so the sawtooth
  stays near the limit instead of averaging three quarters of it; at most ``max_cut`` a round, since
  requests sleeping out a Retry-After make a round's measure read low, unless the round's sends kept up
  with its rate and no other process shares the key (then as far as its answers show beyond chance).
  The measure takes every send and every answer of the round, whatever rate paced it, and the larger
  of r(1-s) and the answers let through per second: judged on the round's own requests only (those
  paced at its new rate, which come last), it read 50-85/s for a 100/s limit and the pipeline held
  0.59 of it (bench matrix). r is the rate over the span the round's calls were sent in, not the whole
  round's: a round that sent only its first part (the listing's pages) read low (:meth:`_sent_rate`).
* **Random 429s are a floor, told apart by experiment.** A 429 is first a signal to slow down, so
  a share of 429s above the ``floor`` cuts. If the round after the cut (only answers to requests
  paced at the new rate count: every rate change starts an epoch) shows the same share, and again
  after a second cut, the 429s did not depend on our rate (a flaky proxy, random gateway faults):
  their share becomes the floor and the rate is restored. Against a real limit the share falls after
  a cut, so the limit is not taken for noise (the second cut is there because a gateway's big bucket,
  draining, can hide the excess for one round). But not on a key other processes keep over its
  limit: one process's cut barely changes what the key is sent. Random 429s come at their share in
  every stretch of calls, so a stretch of the last minute with decisively fewer (this process's
  rounds, or the key's beats) bounds the floor (``NoiseBound``): a share over the bound is a limit's.
  A floor so found is refined by the rounds right after a cut or trim, which run under the limit
  (rounds at it would teach it the limit's own 429s). Just over the floor after a probe up, or twice
  running, trims the rate by the excess. A share near the floor needs enough answers (``precision``)
  to count as clean. A round after a cut is judged only once its answers favour one reading
  ``decisive_odds`` to one: the share the 429s had, or the few that the limit the cut measured
  predicts at the new rate (or show more 429s than either: a big bucket drained under the cut, and
  the round cuts at once). Judged at 49 answers, an unlucky round
  under 10 % noise read as a limit, and cut after cut held one of 24 simulated draws at 0.08 of the
  limit; counting on, their mean went from 0.93 to 0.97 and the lowest to 0.65. The verdict of noise
  needs both: a share within chance of the one before (taken at its low end, since the first round's
  20 answers read 10 % noise as 20 % one time in ten), and closer to it than to the limit's prediction.
  A round after a cut far under the floor pulls the floor down: an experiment while a big bucket
  drained can take some of the limit's 429s for noise, and such a floor holds the rate over the limit.
  Over 24 draws of 10 % noise on 50/s (1 s bucket), 10-40 s went from 0.83 of the limit (lowest
  0.13) to 0.98 (0.68), with the same 429s over the noise (0.047). One experiment judges one cut, and a
  few random 429s a round (5 %: one or two of 20, over no floor enough to cut) cannot tell the share
  before a cut from the few a limit predicts after it: the round read a limit, cut after cut, and the
  rate sank to a fifth of the limit. So the chain of rounds since the cuts began is judged too
  (:meth:`_noise_in_chain`, a lone process only, as a shared key's 429s come with what the others
  send): when their 429s kept one share within chance at every rate they were sent at, over a span of
  a quarter or more, and no limit explains them better (:func:`fit_limit`), that share is the floor
  and the rate goes back to where the chain began. Simulated (``bench/noise_floor.py``, 48 draws of a
  lone process starting after the listing's pages): 5 % noise on 50/s held 0.998 of it from 40 s on
  (lowest 0.87; 0.90 and 0.21 without), 20 % 0.96 (0.79; 0.93 and 0.03), 10 % alike. Known weakness,
  measured in the tests' simulation: with 20% random 429s the floor can be underestimated and the
  rate held lower than the limit allows (no image is lost; the run is slower). A slow start judged at
  20 answers makes that likelier with a 1 s bucket: 24 draws at 50/s held 0.92 of it from 40 s on
  (0.95 when slow-start rounds waited for the floor's precision), two of them under half.
  Held at the limit, random 429s hide how far over it the rate is, so a lone process that found a floor
  also fits the last minute's rounds together (:meth:`_over_the_fitted_limit`): the limit and the floor
  that explain their 429s at the rates they were sent at (:func:`fit_limit`), whose floor it takes, and a
  rate over every limit they leave likely goes under them. Simulated (12 draws of 10 % on 50/s, from 40 to
  150 s): the limit's own 429s were 4.1 % of the calls (6.2 at worst) and are 2.5 % (3.9), for the same
  goodput (0.991 of what the noise leaves).
* **Probing speeds up while it meets no limit.** Slow start (x1.5 a round, from :func:`start_rate`)
  until the first cut, then growth of ``first_step`` that doubles each clean round (up to ``max_step``)
  and resets at the first 429s, so a risen limit is found in a few rounds; within 10 % of the limit the
  last cut measured it only creeps by ``first_step`` (as TCP CUBIC flattens near its last loss), since a
  gateway's bucket can hide a leap over it for seconds and then answer a burst of 429s. After
  ``creep_rounds`` clean rounds there the limit has moved (processes sharing the key finished: creeping
  at 2 % a round, the last process of four held 0.3 of the freed key for 15 s), and probing speeds up
  again, as CUBIC's does past its plateau. Growth needs callers to have been held back: a process that
  the number of requests in flight limits learns nothing by raising a rate it does not use.

**Processes on one key are told of each other** (``transforms/clients/rate_peers.py``, a beat every
second into a Supabase table, as Google's Doorman or Envoy's global rate limit share one quota through
a service, but only to learn how many send and what the key answers them). Alone, each process's
cut to its own part of what got through keeps the parts they started with: AIMD is fair through
*additive* increase, ours is multiplicative. Beam splits the work among the processes once, so they
finish at different times, and in a trace of four processes the last ones crept from 7/s at 2 % a
round of 3 s (20 answers at 7/s) for 15-40 s. Told by the beats, a process under ``fair_band`` of its
fair part (what the key answered all of them while it refused some, or let through since if more, over
their number) goes to it at once (at most x2 a round), one still in slow start over it starts from it,
and one over it stops growing for a few rounds after a cut (not for good: a process may want less than
its part); a beat in which the key refused a third of its calls or more (its limit fell) takes a process
over its even part of what got through there at once (at most half), as a round of its own would,
seconds later. A beat in which the key refused nothing is a clean round of all of them: from the second
such beat in a row, a process whose callers waited for a token since the last beat grows by the key's
step (2 %, doubling each clean beat to ``key_max_step``, reset by a refusing one), so at a few calls a
second each, when a round of 20 answers of its own takes seconds, the processes climb together a beat at
a time (simulated, sixteen processes starting together on 100/s: 0.90 of it from 5 to 20 s and 0.98
after, against 0.78-0.79 and 0.93-0.94; growing from the first clean beat, 0.91-0.92 and 0.97 with
2.1-2.7 % 429s against 1.6-1.9 %). With the job's limit given, each process takes its part of it among
the processes that send, not among as many as the job could start.

**Processes on a key of few calls a second take turns** (migration 0009), as TDMA shares a radio channel.
Each pacing its own part, their calls meet at the gateway by chance, and a bucket that holds two calls
(20/s with a 0.1 s burst) refused 8-17 % of four processes' calls at 0.6-0.9 of its limit
(``bench/collisions.py``); their controllers took that for the limit, and four processes held 0.71 of a
limit dropped to 20/s with 9 % 429s (bench matrix). A process that asks (``rate_peers.py``) gets its rank
among those that did and sends only in its turn of each ``frame_seconds`` of the wall clock (one turn per
process, in rank order), at its rate times their number: the gateway sees one paced process at a time
(0-0.1 % refused, the same draws). Its time then runs in its turns (:meth:`_now`): the bucket, its
reservations and a round's rates are in the time it may send, so a round that spans two turns reads as
one that spans one. Turns cost what a process does not send in its own, which no other may use, so it
asks only while its rate is small (``rate_peers.py``). The wall clocks of processes on several machines
are taken to agree to a few milliseconds (inferred for Dataflow, whose VMs keep NTP time; not measured):
a turn off by that much overlaps the next by a call or two, which a bucket of two absorbs.

``Retry-After`` is honoured by the retry of the request that got it, with jitter (``retry.py``);
the bucket then paces the returning requests, so no herd returns at once and nobody freezes the
bucket for everyone on a random 429's hint.

    limiter = AdaptiveRateLimiter(rate=None)
    limiter.acquire()          # blocks until a token is free; returns seconds waited
    limiter.on_success()       # the request this thread sent was answered
    limiter.on_throttled()     # ... or got a 429
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_STALL_TIMEOUT = 600.0
JOB_START, LONE_START = 20.0, 30.0  # requests/s a process starts an unknown limit's search at (start_rate)


def start_rate(processes: int) -> float:
    """Where each of a job's ``processes`` starts searching an unknown limit.

    A process alone on its job starts at ``LONE_START``, one round up the slow start's ladder (20, 30,
    45, 67, 100/s a round apart): its listing and its first details calls are the whole import's start,
    and that round cost it about 1 s (``bench/throughput.py --matrix --images 5000 --cases "300 ms"``,
    four paired runs: 57.3-57.7 s from 30/s, 58.1-58.6 s from 20/s). The processes of one job start
    together at ``JOB_START`` each, as many of them would otherwise start far over a small key at once
    (simulated: four on 50/s, untold of each other, 4.0 % of calls 429 starting at 20/s and 22.4 % at
    30/s). Simulated alone over 60 s (tests/unit/test_ratelimit.py's model, eight draws each): the same
    429 shares from 30 as from 20/s on 20/s with a 0.1 s burst (1.9 and 1.7 %), 100/s at 300 ms (2.0 %)
    and 50/s with 10 % random 429s (15.2 and 14.9 %), and 0.97 against 0.95 of 100/s; two imports at
    once on 50/s (each alone on its job, told of each other; three draws, alike without noise) 2.8
    against 2.6 % with a 0.1 s burst, 5.7 against 3.9 % with a 1 s one.
    """
    return LONE_START if processes <= 1 else JOB_START


class StallWatch:
    """Whether the run is stalled on rate limiting: calls kept going out for ``timeout`` seconds and
    none succeeded. One per client (so per process), shared by its threads: a 429 is waited out for
    as long as *some* call gets through, and once none has for ``timeout`` every waiting call gives
    up together instead of each spending its own budget. A gap with no calls at all (between two
    imports of one process) is idleness, not a stall; a gap after a 429 is its wait (a Retry-After
    can be longer than the timeout the user set), not idleness."""

    def __init__(self, timeout: float = DEFAULT_STALL_TIMEOUT, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        self._waiting_out = False  # the last answer was a 429
        self._announced = False

    def attempt(self) -> None:
        now = self._clock()
        with self._lock:
            idle = self._last_attempt is not None and now - self._last_attempt > self.timeout \
                and not self._waiting_out
            if self._last_attempt is None or idle:
                self._last_success = now
            self._last_attempt = now

    def success(self) -> None:
        with self._lock:
            self._last_success = self._clock()
            self._waiting_out = False

    def throttled(self) -> None:
        with self._lock:
            self._waiting_out = True

    def forget(self) -> None:
        """A new run: an earlier run's stall says nothing about it."""
        with self._lock:
            self._last_success = self._last_attempt = None
            self._waiting_out = self._announced = False

    def stalled(self) -> bool:
        with self._lock:
            return self._last_success is not None and self._clock() - self._last_success > self.timeout

    def first_report(self) -> bool:
        """True exactly once per stall: the caller logs the one line saying the run stops."""
        with self._lock:
            first, self._announced = not self._announced, True
            return first


def _same_share(share: float, n: int, before: float, before_n: int) -> bool:
    """Whether two rounds' shares of 429s differ by no more than chance (three standard errors)."""
    mean = min(max((share * n + before * before_n) / (n + before_n), 0.01), 0.99)
    chance = 3.0 * math.sqrt(mean * (1.0 - mean) * (1.0 / n + 1.0 / before_n))
    # A cut under a limit shrinks it far more; ``before`` is taken at its low end, as a round of 20 answers reads
    # 10 % noise as 20 % one time in ten.
    low = before - math.sqrt(before * (1.0 - before) / before_n)
    return abs(share - before) <= chance and share >= 0.6 * low


def _binomial_ll(throttled: float, answers: float, share: float) -> float:
    """Log-likelihood of ``throttled`` 429s in ``answers`` if 429s come at ``share`` (kept off 0 and 1)."""
    share = min(max(share, 0.005), 0.995)
    return throttled * math.log(share) + (answers - throttled) * math.log(1.0 - share)


def _one_share(rounds: list[tuple[float, int, int]]) -> bool:
    """Whether rounds of (rate, 429s, answers) vary no more than chance around one share (a dispersion test):
    random 429s do; 429s that other processes on the key cause come and go with what they send."""
    throttled, answers = sum(t for _, t, _ in rounds), sum(n for *_, n in rounds)
    share = min(max(throttled / answers, 0.01), 0.99)
    dispersion = sum((t - n * share) ** 2 / (n * share * (1.0 - share)) for _, t, n in rounds)
    freedom = len(rounds) - 1
    return dispersion <= freedom + 3.0 * math.sqrt(2.0 * freedom) + 2.0


class LimitFit(NamedTuple):
    """The limit and the floor that explain rounds of (rate sent at, 429s, answers) best, by log-likelihood."""
    gain: float  # over random 429s alone (0 when no limit in reach of the rates does better)
    limit: float  # calls/s the gateway lets through (infinite: none in reach)
    floor: float  # the share of 429s that do not depend on the rate
    upper: float  # the highest limit within ``bound`` nats of the best (infinite: no limit is as likely)
    lower: float  # the lowest


def _floor_under(rounds: list[tuple[float, int, int]], limit: float) -> float:
    """The most likely floor if the gateway lets ``limit`` calls/s through: a round at rate r has 429s at
    1 - (1 - floor) q, q = min(1, limit / r). The likelihood's slope in u = 1 - floor falls as u grows;
    bisection finds where it is 0."""
    throttled, answers = sum(t for _, t, _ in rounds), sum(n for *_, n in rounds)
    if not throttled:
        return 0.0
    passes = [(t, min(1.0, limit / r)) for r, t, _ in rounds if t]
    low, high = 0.0, 1.0
    for _ in range(24):
        u = (low + high) / 2.0
        if sum(t * q / (1.0 - u * q) for t, q in passes) > (answers - throttled) / u:
            high = u
        else:
            low = u
    return 1.0 - (low + high) / 2.0


def fit_limit(rounds: list[tuple[float, int, int]], bound: float = 2.0, points: int = 80) -> LimitFit:
    """The limit and floor that explain rounds of (rate sent at, 429s, answers) best: random 429s come at one
    share whatever the rate; a limit L adds 1 - L/r of the rest at a rate r over it. Pooling every round of
    the last minute tells a limit a few percent under the rate from random 429s, which one round cannot."""
    throttled, answers = sum(t for _, t, _ in rounds), sum(n for *_, n in rounds)
    noise = sum(_binomial_ll(t, n, throttled / answers) for _, t, n in rounds)
    rates = [r for r, _, _ in rounds]
    low, high = min(rates) * 0.5, max(rates)
    fits = [(0.0, math.inf, throttled / answers)]
    for k in range(points):
        limit = low + k * (high - low) / points
        floor = _floor_under(rounds, limit)
        gain = sum(_binomial_ll(t, n, 1.0 - (1.0 - floor) * min(1.0, limit / r)) for r, t, n in rounds) - noise
        fits.append((gain, limit, floor))
    best = max(fits)
    likely = [limit for gain, limit, _ in fits if gain >= best[0] - bound]
    return LimitFit(*best, max(likely), min(likely))


class _Cut(NamedTuple):
    """What the round before a cut (or trim) showed, for the experiment that tells a limit from random 429s."""
    rate: float  # the rate before the episode's first cut, restored if the 429s were random
    share: float  # of 429s
    answers: int  # the share was measured on
    tries: int  # second cuts tried
    passed: float  # calls/s the gateway let through, by the cut's measure


def _log_odds(throttled: int, n: int, share: float, other: float) -> float:
    """Log-odds of ``throttled`` 429s in ``n`` answers if 429s come at ``share`` rather than at ``other``."""
    return _binomial_ll(throttled, n, share) - _binomial_ll(throttled, n, other)


def wilson_upper(throttled: float, answers: float, z: float) -> float:
    """The highest share of 429s that ``throttled`` of ``answers`` leave within ``z`` standard errors (Wilson's
    score bound, which holds at shares near 0 where the normal one does not)."""
    share, z2 = throttled / answers, z * z
    spread = z * math.sqrt(share * (1.0 - share) / answers + z2 / (4.0 * answers * answers))
    return (share + z2 / (2.0 * answers) + spread) / (1.0 + z2 / answers)


class NoiseBound:
    """How high the floor (the share of 429s that do not depend on the rate) can be, from the answers of the
    last ``memory`` seconds: random 429s come at their share in every stretch of calls, so a stretch with
    decisively fewer (``z`` standard errors) bounds it. Stretches are runs of consecutive records of one
    source (this process's rounds, or the key's beats, which overlap those in time).

    Why: on a key shared by processes, one process's experiment cannot tell the others' excess from noise.
    Its cut changes little of what the key is sent, so its share of 429s stays, and it took that share for
    random 429s: in a bench trace of four imports on 100/s with no noise at all, all four learned floors of
    0.06-0.16 in the first 65 s, and the key's 429s crept from 2-4 % to 10-20 % of its calls. The key's beats had
    shown whole seconds of 100 calls with none.
    """

    def __init__(self, memory: float = 60.0, z: float = 4.0):
        self.memory = memory
        self.z = z
        self._records: dict[str, deque[tuple[float, float, float]]] = {}

    def add(self, source: str, now: float, throttled: float, answers: float) -> None:
        if answers <= 0:
            return
        records = self._records.setdefault(source, deque())
        records.append((now, throttled, answers))
        while records[0][0] < now - self.memory:
            records.popleft()

    def bound(self, now: float) -> float:
        lowest = 1.0
        for records in self._records.values():
            recent = [(throttled, answers) for when, throttled, answers in records if when >= now - self.memory]
            for start in range(len(recent)):
                throttled = answers = 0.0
                for more_throttled, more_answers in recent[start:]:
                    throttled, answers = throttled + more_throttled, answers + more_answers
                    lowest = min(lowest, wilson_upper(throttled, answers, self.z))
        return lowest


AUTO_MAX_IN_FLIGHT = 64  # Roboflow API calls in flight per process without --concurrency: 100/s at 0.6 s


class LittleGate:
    """At most as many API calls in flight as Little's law asks for the limiter's rate and the latency
    measured (``rate x latency x headroom``, plus a few), between ``lower`` and ``upper``. In turns the
    rate is the one requests leave at in this process's turn (:attr:`AdaptiveRateLimiter.send_rate`).

    A fixed number is wrong for some latency: 20 in flight reach 100/s only while Roboflow answers
    within 0.2 s. Headroom keeps the gate from being what holds the rate back (only the limiter's bucket
    does that, and it grows when callers wait for it); the bound keeps a slow answer from piling
    requests up. Start: ``lower``, until the first answers say how long one takes.
    """

    def __init__(self, limiter: AdaptiveRateLimiter, upper: int, *, lower: int = 16, headroom: float = 2.0,
                 smoothing: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.limiter = limiter
        self.upper = upper
        self.lower = min(lower, upper)
        self.headroom = headroom
        self.smoothing = smoothing
        self._clock = clock
        self._cond = threading.Condition()
        self._local = threading.local()
        self.in_flight = 0
        self.latency: float | None = None

    @property
    def limit(self) -> int:
        if self.latency is None:
            return self.lower
        wanted = math.ceil(self.limiter.send_rate * self.latency * self.headroom) + 2
        return max(self.lower, min(self.upper, wanted))

    def __enter__(self) -> LittleGate:
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait(0.05)  # the limit also moves with the rate, which no notify announces
            self.in_flight += 1
        self._local.start = self._clock()
        return self

    def __exit__(self, *exc_info) -> None:
        took = self._clock() - self._local.start
        with self._cond:
            self.in_flight -= 1
            self.latency = took if self.latency is None else self.latency + self.smoothing * (took - self.latency)
            self._cond.notify()


def in_flight_gate(max_in_flight: int | None) -> contextlib.AbstractContextManager:
    """A ``with`` gate letting at most ``max_in_flight`` requests through at once (None: no gate)."""
    return threading.BoundedSemaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float | None = None,
        *,
        job_rate: float | None = None,
        initial_rate: float = JOB_START,
        min_rate: float = 0.5,
        window: float = 1.0,
        min_samples: int = 20,
        max_round: float = 8.0,
        precision: float = 0.04,
        tolerance: float = 0.02,
        margin: float = 0.03,
        max_cut: float = 0.5,
        kept_up: float = 0.9,
        cut_z: float = 2.0,
        decisive_odds: float = 10.0,
        first_step: float = 0.02,
        max_step: float = 0.5,
        creep_rounds: int = 4,
        floor_memory: int = 2000,
        burst_seconds: float = 0.1,
        reserve_ahead: float = 0.25,
        fair_band: float = 0.9,
        start_grace: float = 10.0,
        key_memory: float = 0.98,
        key_cut: float = 1.0 / 3.0,
        key_max_step: float = 0.16,
        key_clean_beats: int = 2,
        chain_rounds: int = 12,
        chain_answers: int = 150,
        chain_span: float = 1.25,
        chain_gain: float = 2.0,
        fit_memory: float = 60.0,
        fit_gain: float = 4.0,
        frame_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ):
        self.max_rate = rate
        self.job_rate = job_rate if rate is not None else None  # the whole job's limit, shared by the peers
        self._static_part = rate  # the job's limit over as many processes as it can start
        self.start_grace = start_grace
        self.fair_band = fair_band
        self.key_memory = key_memory
        self.key_cut = key_cut
        self.key_max_step = key_max_step
        self.key_clean_beats = key_clean_beats
        self.chain_rounds = chain_rounds
        self.chain_answers = chain_answers
        self.chain_span = chain_span
        self.chain_gain = chain_gain
        self.fit_memory = fit_memory
        self.fit_gain = fit_gain
        self.peers = 1  # processes sending on this key, as the last beat said (rate_peers.py)
        self._wanted = False  # a caller waited for a token since the last beat
        self._key_step = first_step  # growth at the key's next clean beat (``_grow_with_the_key``)
        self._clean_beats = 0  # the key's clean beats in a row
        self._key_rate = 0.0  # what the key answers all of them when full: its limit, as the beats measured it
        self._shared = False  # another process sent on the key (a process alone knows all it needs)
        self.rate = float(rate if rate is not None else initial_rate)
        self.min_rate = min_rate
        self.window = window
        self.min_samples = min_samples
        self.max_round = max_round
        self.precision = precision
        self.tolerance = tolerance
        self.margin = margin
        self.max_cut = max_cut
        self.kept_up = kept_up
        self.cut_z = cut_z
        self.decisive_odds = decisive_odds
        self.first_step = first_step
        self.max_step = max_step
        self.creep_rounds = creep_rounds
        self.floor_memory = floor_memory
        self.burst_seconds = burst_seconds
        self.reserve_ahead = reserve_ahead
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self.frame_seconds = frame_seconds
        self._turn: tuple[int, int] | None = None  # (rank, processes taking turns) on a shared key
        self._lock = threading.Lock()
        self._local = threading.local()
        self._queue: deque[threading.Event] = deque()  # callers waiting to reserve, in the order they came
        now = clock()
        self._time = now  # the limiter's time (:meth:`_now`), which never goes back
        self._behind = self._shift = 0.0
        self._born = now
        self._tokens = 1.0
        self._last = now
        self.floor = 0.0
        self._floor_n = 0  # answers the floor was measured on (0: no floor found)
        self._over = self._probed = False  # last round: just over the limit; last change: a probe up
        self._lowered = False  # last change: a cut or trim
        self._answered = 0
        self._known_limit: float | None = None  # the limit the last cut measured
        self._creeping = 0  # clean rounds spent creeping around it since
        self._slow_start = rate is None  # a known limit is where we start; an unknown one is searched for
        self._step = max_step if self._slow_start else first_step
        self._last_cut: _Cut | None = None  # before the last cut
        self._chain: list[tuple[float, int, int]] = []  # rounds since the cuts began: (rate sent at, 429s, answers)
        self._chain_top: float | None = None  # the rate the cuts began at (growth back to it ends the chain)
        self._recent: deque[tuple[float, float, int, int]] = deque()  # rounds of the last minute: (end, rate, 429s, n)
        self._epoch = 0
        self._leapt = False  # the rate came from a leap up (a slow start's, or growth past the first step)
        self._fit_trimmed = -math.inf  # when the fit last took the rate under its limit
        self._noise_bound = NoiseBound()
        self._new_round(now)
        self.throttle_events = 0
        self.successes = 0
        self.sends = 0
        self.unused = 0.0

    def _new_round(self, now: float) -> None:
        if self._answered:
            self._bound_floor("process", now, self._throttled, self._answered)
            if self._answered >= self.min_samples // 2:
                self._chain.append((self._round_rate, self._throttled, self._answered))
                del self._chain[:-self.chain_rounds]
                if not self._leapt:
                    self._recent.append((now, self._round_rate, self._throttled, self._answered))
        while self._recent and self._recent[0][0] < now - self.fit_memory:
            self._recent.popleft()
        self._round_start = now
        self._next_check = now + self.window
        self._sent = self._answered = self._throttled = self._accepted = 0
        self._first_send = self._last_send = now  # the span the round's sends took (``_sent_rate``)
        self._held_back = False
        self._round_rate = self.rate  # what _sent_rate() read at the round's last decision

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * self.burst_seconds)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        tokens = self._tokens + elapsed * self.rate
        self.unused += max(0.0, tokens - self.capacity)  # sends the rate allowed and nobody asked for
        self._tokens = min(self.capacity, tokens)

    @property
    def fair_share(self) -> float | None:
        """This process's part of what the key lets through, when other processes on it said so."""
        return self._key_rate / self.peers if self._key_rate and self._shared else None

    def _bound_floor(self, source: str, now: float, throttled: float, answers: float) -> None:
        """Record a stretch of answers; a floor it shows to be too high comes down to what it allows."""
        self._noise_bound.add(source, now, throttled, answers)
        if self.floor > 0.0:
            self.floor = min(self.floor, self._noise_bound.bound(now))

    def peers_said(self, peers: int, key_accepted: float, key_refused: float, seconds: float = 1.0, *,
                   rank: int | None = None, turns: int = 0) -> None:
        """A beat of the processes sending on this key (rate_peers.py): how many send now, and how many
        calls per second the key answered and refused (429) them.

        With the job's limit given, this process takes its part of it among the live processes, not
        among as many as the job could start: the last process of a job or of an autoscaled Dataflow
        pool gets the whole limit. Without it, what the key answered them while it refused some is its
        limit; a process under its fair part of that grows to it within a round or two (:meth:`_decide`),
        so a process that finished frees its part for the others within seconds. With ``rank`` (0009's
        beat, to a process that asked for a turn) and more than one of ``turns``, it sends in its turn."""
        peers = max(1, int(peers))
        with self._lock:
            now = self._now()
            self._bound_floor("key", now, key_refused * seconds, (key_accepted + key_refused) * seconds)
            before, self.peers = self.peers, peers
            self._shared = self._shared or peers > 1
            turn = (rank, turns) if rank is not None and 0 <= rank < turns > 1 else None
            if turn != self._turn:
                # New turns: the 429s of requests sent in the old ones (which other processes' turns may have
                # overlapped while the beats disagreed) say nothing of this process's rate. An experiment in
                # progress is void: at four processes' start, taking those 429s for random ones set floors of
                # 0.2 (simulation), and the last process left on the key held 5 % 429s for good.
                log.debug("turn %s -> %s (rank, processes taking turns)", self._turn, turn)
                self._take_turn(turn)
                self._last_cut = None
                self._new_epoch(now)
            if self.job_rate is not None and self.max_rate is not None:
                part = self.job_rate / peers
                # Lower at once, raise when two beats running say so: the others count a process that joined
                # a beat after it counted them, and meanwhile the job must not exceed its limit. Over the static
                # part only after ``start_grace``: a job's processes start seconds apart, and one that took the
                # whole limit before the other had beaten got 43-44 429s in the benchmark (4-7 static).
                grown_up = part <= self._static_part or now - self._born >= self.start_grace
                if part < self.max_rate or part > self.max_rate and peers == before and grown_up:
                    at_cap = self.rate >= 0.999 * self.max_rate
                    self.max_rate = part
                    if at_cap or self.rate > part:
                        self._set_rate(part, now)
                return
            # What the key answered is its limit only while it refuses some calls: in a slow start it is only
            # what was asked (a beat 2 s into four processes' start read 26/s of a 50/s key). A beat reads it
            # low when the processes' sends were uneven, so a higher measure counts at once and a lower one by
            # half (a limit that fell is followed within a few beats). While the key has room (the processes
            # backed off, or one left), the last measure is kept, fading.
            if key_refused > self.tolerance * key_accepted:
                self._key_rate = max(key_accepted, (key_accepted + self._key_rate) / 2.0)
            elif self._key_rate:
                # With room, what the key let through is still no more than its limit. Fading alone, a measure
                # taken in four processes' uneven start (32/s of 50) held their parts at 7-10/s while the key
                # let 36-45/s through, and they crept from there for 20 s (bench trace). It fades by
                # ``key_memory`` a second of beats, whatever their interval.
                self._key_rate = max(self._key_rate * self.key_memory ** seconds, key_accepted)
            fair = self.fair_share
            if fair is not None and self._slow_start and self.rate > fair:
                # Still searching while the key is full with the others' calls (this process came late, or all
                # started together and it grew fastest): its part of the key is where to go, not x1.5 past it.
                self._slow_start, self._step = False, self.first_step
                self._known_limit, self._creeping = fair, 0
                self._set_rate(fair * (1.0 - self.margin), now)
                return
            calls = key_accepted + key_refused
            part = key_accepted / peers
            if self._shared and calls and key_refused / calls - self.floor > self.key_cut and self.rate > part:
                # The key refused a third of its calls or more: its limit fell (or they all probed past it
                # together). What it let through, over the processes, is this one's part: go there at once (at
                # most half a beat), as a round of this process's own would, but a round at a few calls a
                # second takes seconds, and the round after a cut twice as long. Four processes on a limit
                # that fell from 50 to 20/s sent 30-50/s for 10 s after it (bench, turns without this cut).
                self._last_cut = None
                self._cut_to(max(part * (1.0 - self.margin), self.rate * (1.0 - self.max_cut)), part, now)
            else:
                self._grow_with_the_key(key_accepted, key_refused)
            self._wanted = False

    def _grow_with_the_key(self, key_accepted: float, key_refused: float) -> None:
        """A beat in which the key refused nothing is a clean round of the key's: from the second in a row, a
        process that wanted more grows by the key's step (doubling each such beat, reset by a refusing one), as
        all processes on the key do together, so the key's total grows by it whatever each process's own rounds
        take. At a few calls a second a process's own round of 20 answers takes 4-7 s, and after an over-cut
        (four processes at 3-5/s each on a 20/s key, or at 7/s on 50/s after their slow starts met) they crept
        back for 20-35 s (bench traces). Growing from the first clean beat, sixteen simulated processes on
        100/s at their limit had 2.1-2.7 % 429s (1.6-1.9 % from the second). The round in progress goes on
        (no new epoch): a step of at most ``key_max_step`` changes little of what its answers say."""
        if key_refused > 0 or not key_accepted:
            self._key_step, self._clean_beats = self.first_step, 0
            return
        self._clean_beats += 1
        if not (self.peers > 1 and self._clean_beats >= self.key_clean_beats and self._wanted
                and self._last_cut is None and not self._slow_start and not self._throttled
                and not self._above_fair()):
            return
        rate = self.rate * (1.0 + self._key_step)
        rate = rate if self.max_rate is None else min(self.max_rate, rate)
        log.debug("rate %.1f -> %.1f/s at a clean beat of the key", self.rate, rate)
        self.rate = rate
        self._key_step = min(self.key_max_step, 2.0 * self._key_step)

    @property
    def in_turns(self) -> bool:
        return self._turn is not None

    @property
    def send_rate(self) -> float:
        """How fast requests leave while they do: the rate, or in this process's turns ``processes`` times it."""
        return self.rate * (self._turn[1] if self._turn else 1)

    def _turn_time(self, wall: float) -> float:
        """Wall time mapped onto this process's turns: each ``frame_seconds`` of the wall clock (which the
        processes share) is cut into one turn per process, in rank order. Turn time runs ``processes``
        times as fast as the wall clock in this process's turn and stands still in the others'."""
        rank, processes = self._turn
        k, into = divmod(wall, self.frame_seconds)
        turn = self.frame_seconds / processes
        return k * self.frame_seconds + processes * min(max(into - rank * turn, 0.0), turn)

    def _wall_at(self, turn_time: float) -> float:
        """The wall time at which :meth:`_turn_time` reaches ``turn_time``."""
        rank, processes = self._turn
        k, into = divmod(turn_time, self.frame_seconds)
        return k * self.frame_seconds + (rank * self.frame_seconds + into) / processes

    def _now(self) -> float:
        """The limiter's time: the clock, or on a key shared in turns, the clock moved by how far this
        process's turn time is from the wall clock (at most a frame). New turns shift it to go on from where
        it was; if the wall clock steps back, it stands still until it catches up, and so does the bucket."""
        now = self._unclamped_now()
        self._behind = max(0.0, self._time - now)
        self._time = max(self._time, now)
        return self._time

    def _unclamped_now(self) -> float:
        now = self._clock() + self._shift
        if self._turn is not None:
            wall = self._wall()
            now += self._turn_time(wall) - wall
        return now

    def _take_turn(self, turn: tuple[int, int] | None) -> None:
        before = self._unclamped_now()
        self._turn = turn
        self._shift += before - self._unclamped_now()

    def _clock_wait(self, wait: float) -> float:
        """Seconds of the clock until the limiter's time (just read) has moved on by ``wait``."""
        if self._turn is None:
            return wait + self._behind
        wall = self._wall()
        return max(0.0, self._wall_at(self._turn_time(wall) + self._behind + wait) - wall)

    def _sent_rate(self) -> float:
        """The rate the gateway saw this round's calls come at: over the span they were sent in, not the
        round's, whose start and end may have sent nothing (the listing's 21 pages, then the wait for the
        details' stage). Bench matrix, rise case (30/s, 5,000 images, a process alone starting at 30/s): the
        listing's two 429s in 22 calls cut the rate to 15/s judged over the whole round, and it crept back to
        30/s for 14 s (61.3 and 61.5 img/s, two runs); over the sends' span to 21.3/s (66.4 img/s, one run)."""
        if not self._sent:
            return self.rate
        return min(self.rate, self._sent / (self._last_send - self._first_send + 1.0 / self.rate))

    def _cut_to(self, rate: float, limit: float, now: float) -> None:
        """Down to ``rate`` for a ``limit`` measured over it: the search is over, growth starts from the first
        step again, and no token saved at the old rate is spent at the new one."""
        self._slow_start, self._step = False, self.first_step
        self._set_rate(rate, now)
        self._tokens = min(self._tokens, 0.0)
        self._lowered = True
        self._known_limit = limit

    def _new_epoch(self, now: float) -> None:
        self._epoch += 1
        self._new_round(now)

    def _set_rate(self, rate: float, now: float) -> None:
        """A new rate starts a new epoch: answers to requests reserved before it say nothing about it."""
        if rate < self.rate:
            self._creeping = 0
            self._chain_top = self.rate if self._chain_top is None else self._chain_top
        elif self._chain_top is None or rate >= self._chain_top:
            self._chain_top = None
            self._chain.clear()
        rate = max(self.min_rate, rate)
        rate = rate if self.max_rate is None else min(self.max_rate, rate)
        leapt = rate > self.rate * (1.0 + self.first_step) + 1e-9
        log.debug("rate %.1f -> %.1f/s after %d answers, %d of them 429, %d sent in %.2f s (floor %.3f)",
                  self.rate, rate, self._answered, self._throttled, self._sent, now - self._round_start, self.floor)
        self.rate = rate
        self._new_epoch(now)
        self._leapt = leapt

    def _learn_floor(self, throttled: float, answers: int) -> None:
        """Fold ``throttled`` of ``answers`` into the floor, the recent ``floor_memory`` answers weighing most."""
        weight = min(self._floor_n, self.floor_memory)
        self.floor = (self.floor * weight + throttled) / (weight + answers)
        self._floor_n = weight + answers

    def _decide(self, now: float) -> None:
        elapsed = now - self._round_start
        n = self._answered
        if now < self._next_check or n < self.min_samples:
            return
        # A round that waits for more answers is judged again a window later, not at every answer:
        # testing after each one would find a chance excess of 429s far more often than 3 sigma says.
        self._next_check = now + self.window
        share = self._throttled / n
        self._round_rate = self._sent_rate()
        p = min(max(self.floor, 0.01), 0.99)
        sigma = math.sqrt(p * (1.0 - p) / n)
        threshold = max(self.tolerance, 3.0 * sigma)
        if self._last_cut is not None and n < 2 * self.min_samples and elapsed < self.max_round:
            return  # the round after a cut decides what the 429s were: it needs answers enough to tell
        last_cut = self._last_cut
        odds = 0.0  # for the share the 429s had before the last cut, against the few the limit it measured predicts
        beyond = False  # more 429s than either reading allows
        if last_cut is not None:
            predicted = max(0.02, self.floor, 1.0 - last_cut.passed / self.rate)  # 0.02: a pacing's own collisions
            odds = _log_odds(self._throttled, n, last_cut.share, predicted)
            most = max(last_cut.share, predicted)
            beyond = share - most > 3.0 * math.sqrt(most * (1.0 - most) / n)
        if last_cut is not None and share - self.floor > 2.0 * sigma and elapsed < self.max_round \
                and abs(odds) < math.log(self.decisive_odds) and not beyond:
            # Neither verdict clear yet: count on. Judged on 49 answers, an unlucky 3 of them under 10 % noise
            # read as a limit, and cut after cut took a rate from 20 to 3.8/s (simulation). Not when the share
            # is beyond both: a gateway's big bucket that drained under the cut (the limit is under what the
            # round before let through). Traced at 100/s with a 10 s bucket: the cut measured 204/s, so both
            # readings said 20 % at 256/s; the round counted on for 5 s at 37 %, 284 answers 429.
            return
        self._last_cut = None
        if last_cut is not None and share - self.floor > 2.0 * sigma and odds > 0 \
                and _same_share(share, n, last_cut.share, last_cut.answers):
            # Cutting the rate did not change the share of 429s. Once, that can be a gateway's big bucket
            # draining (it hid part of the excess before the cut); twice, the 429s do not depend on our
            # rate (a flaky proxy, random gateway faults). Against a real limit the share falls, to what the
            # limit the cut measured predicts: a share closer to that is no verdict of noise, though within
            # chance of the one before (a 1 s bucket drained under a slow start read 0.29, 0.45 and 0.24).
            throttled, answers = share * n + last_cut.share * last_cut.answers, n + last_cut.answers
            if last_cut.tries == 0:
                self._last_cut = _Cut(last_cut.rate, throttled / answers, answers, 1, self.rate * (1.0 - share))
                self._set_rate(self.rate * max(0.5, 1.0 - (share - self.floor)), now)
                return
            # On a shared key, processes pacing their own calls collide into a few 429s a hundred at the key's
            # limit (``bench/collisions.py``): a share that may be no more than that is no verdict of noise.
            collisions = self._shared and 1.0 - wilson_upper(answers - throttled, answers, 2.0) <= 0.05
            if throttled / answers <= self._noise_bound.bound(now) and not collisions:
                self._learn_floor(throttled, answers)
                # No limit was found, only noise: search from the restored rate as at the start.
                self._slow_start, self._step, self._known_limit = True, self.max_step, None
                self._set_rate(max(last_cut.rate, self._chain_top or 0.0), now)
                return
            # A stretch of answers lately had decisively fewer 429s: they come with the rate after all (on a
            # shared key, the others' excess, which this process's cuts barely change). Slow down, as for a limit.
        if share - self.floor > threshold and not self._shared and self._noise_in_chain(now):
            return
        excess = share - self.floor
        if excess > threshold:
            # Over the limit. The gateway let (1 - share) of what we sent through, less the floor's random
            # 429s: that is the limit, or our part of it when other processes share the key. Go just under.
            sent_rate = self._sent_rate()
            # Or, read straight off the gateway: the answers it let through this round, whatever rate paced
            # their requests. Both read low when the round's sends were uneven; the larger is the better.
            def limit_at(refused: float) -> float:  # the limit if ``refused`` of the round's calls were 429'd
                return max(sent_rate * (1.0 - refused), self._accepted / elapsed) / (1.0 - self.floor)

            limit = limit_at(share)
            if last_cut is None:  # a new episode is an experiment; a cut after a cut (429s that followed the rate) not
                self._last_cut = _Cut(self.rate, share, n, 0, limit * (1.0 - self.floor))
            # At most ``max_cut`` a round: while 429'd requests sleep out their Retry-After, fewer are sent
            # and the round's measure of the limit reads low; if the limit really fell further, the next
            # round cuts again (a drop from 100/s to 30/s takes two). Deeper when the round's sends kept up
            # with its rate (the gateway was offered more than it let through all round, so what it let
            # through is its limit), as far as its answers show beyond chance (``cut_z`` standard errors: 13
            # of 20 answers 429 at 20/s, one process's share of four slow starts on a key, is not deeper than
            # half). Capped at half, a 2 s bucket that drained under a climb to 67/s (a 20/s limit) was cut to
            # 34/s, and the round that judged that cut (53 answers at 150 ms, 2.3 s) had 32 % 429s. Not on a
            # key other processes share, but in turns (the gateway sees this process alone in its own): what
            # got through there depends on what they sent while cutting too, and deeper cuts took four
            # processes on 50/s from 3.1 to 5.0 % 429s (paired; 5.4 in another run).
            cap = (1.0 - self.max_cut) * self.rate
            if (not self._shared or self._turn is not None) and self._sent >= self.kept_up * self.rate * elapsed:
                fewest = 1.0 - wilson_upper(n - self._throttled, n, self.cut_z)
                cap = min(cap, limit_at(fewest) * (1.0 - self.margin))
            cut_to = min(self.rate, max(cap, limit * (1.0 - self.margin)))
            self._cut_to(cut_to, cut_to / (1.0 - self.margin), now)
            return
        if self._over_the_fitted_limit(now):
            return
        if n < p * (1.0 - p) / self.precision**2 and elapsed < self.max_round and not self._slow_start:
            # Too few answers to tell a small excess from the floor's noise: keep counting. Not in a slow start,
            # whose x1.5 a round shows as a large excess: at a 10 % floor a round took 80 answers, and the climb
            # from 20 to 67/s took 11 s (simulation: 0.83 of the limit over 10-40 s, 0.98 judged each second).
            return
        if self._floor_n and self._lowered and excess <= 2.0 * sigma:
            # Refine a floor found by experiment with rounds just after a cut or trim, under the limit:
            # rounds at the limit would teach it the limit's own 429s, and it would creep up. Such a round far
            # under the floor is the best news of all: the floor took some of the limit's 429s (an experiment
            # while a big bucket drained), and held the rate over the limit as noise. A cut can leave the rate
            # over the limit all the same (81 -> 57 -> 52/s of 50/s took a 10 % floor to 0.15, simulation):
            # :meth:`_over_the_fitted_limit` sets such a floor right. Refined downward only, a floor that a
            # lucky round took under the noise stayed there, and its excess held the rate: 20 % noise held 0.939
            # of a 50/s limit from 40 to 90 s, ten of 48 draws under 0.9 (0.950 and three refined both ways).
            self._learn_floor(self._throttled, n)
        self._lowered = False
        over, self._over = self._over, excess > 2.0 * sigma
        if self._over and (over or self._probed):
            # Just over the limit (a few 429s) after a probe, or twice running: trim them off, probe gently.
            # A trim is an experiment too: at a low rate, random 429s show as such small excesses only.
            self._last_cut = _Cut(self.rate if last_cut is None else last_cut.rate, share, n, 0,
                                  self.rate * (1.0 - share))
            self._step = self.first_step
            self._probed = False
            self._set_rate(self.rate * (1.0 - excess), now)
            self._lowered = True
        elif excess > sigma:  # at the limit, or noise: hold
            self._step = self.first_step
            self._probed = False
            self._new_round(now)
        elif self._held_back and self._above_fair():
            # Over its fair part of a key it found full: leave the growth to the processes under it, for a few
            # rounds (a process under its part may not want more: then the key has room, and this one takes it).
            self._probed = False
            self._creeping += 1
            if self._creeping >= self.creep_rounds:
                self._known_limit, self._creeping = None, 0
            self._new_round(now)
        elif self._held_back and (self.max_rate is None or self.rate < self.max_rate):
            fair = self.fair_share
            if fair is not None and self.rate < self.fair_band * fair:
                # Under its part of what the key lets through: a process on the key finished, or this one
                # came late. Take the part (just under it) within a round or two, not by creeping. Under 0.9
                # of it, not 0.8: three processes left at 0.8 of their new part crept there, and the key ran at
                # 0.7 of its limit for 8 s (bench trace, four processes on 50/s, one finished).
                self._known_limit, self._creeping, self._step = None, 0, self.first_step
                self._probed = True
                self._set_rate(min(2.0 * self.rate, fair * (1.0 - self.margin)), now)
                return
            step = self.max_step if self._slow_start else self._step
            near = self._known_limit is not None and 0.9 * self._known_limit <= self.rate * (1.0 + step) \
                and self.rate <= 1.1 * self._known_limit
            if near:  # around the last limit measured: creep, as a gateway's bucket hides a leap for a while
                step = self._step = self.first_step
                self._creeping += 1
                if self._creeping >= self.creep_rounds:
                    # Clean rounds at and over the last limit: it moved (a process sharing the key finished,
                    # or the gateway allows more). Probe further each round again, as CUBIC does past its plateau.
                    self._known_limit, self._creeping, self._step = None, 0, 4 * self.first_step
            grown = self.rate * (1.0 + step)
            if not self._slow_start and not near:  # each clean round probes further: a risen limit is found fast
                self._step = min(self.max_step, self._step * 2)
            self._probed = True
            self._set_rate(grown, now)
        else:
            self._probed = False
            self._new_round(now)

    def _noise_in_chain(self, now: float) -> bool:
        """Whether the rounds since the cuts began, this one too, kept one share of 429s whatever their rate:
        random 429s, not a limit. Then the floor is their share and the rate goes back to where the cuts began."""
        rounds = [*self._chain, (self._round_rate, self._throttled, self._answered)]
        rates = [r for r, _, _ in rounds]
        answers = sum(n for *_, n in rounds)
        if len(rounds) < 4 or answers < self.chain_answers or max(rates) < self.chain_span * min(rates):
            return False
        throttled = sum(t for _, t, _ in rounds)
        if not _one_share(rounds) or fit_limit(rounds).gain > self.chain_gain \
                or throttled / answers > self._noise_bound.bound(now):
            return False
        self._learn_floor(throttled, answers)
        self._last_cut = None
        self._slow_start, self._step, self._known_limit = True, self.max_step, None
        self._set_rate(max(self._chain_top or 0.0, self.rate), now)
        return True

    def _over_the_fitted_limit(self, now: float) -> bool:
        """With random 429s, whether the last minute's rounds, fitted together, show a limit under the rate;
        then the rate goes under it. Whenever they show a limit, their fit's floor is the floor, and its limit
        the one to creep near while the rate is within the likely ones (not under them: a fit that read 43/s
        for 50/s held a rate at 34/s creeping 2 % a round, 0.76 of the limit for 50 s in a simulated draw).

        One round cannot tell a rate a few percent over the limit from one under it: 2-10 % over 50/s add 2-9 %
        of 429s to 10 % random ones, within chance of 100 answers. So rounds just over it read clean and the
        rate crept on, and the rounds after its trims, still over it, taught the floor the limit's own 429s
        (0.12-0.19 for 10 %): the bench's 50/s with 10 % random 429s held 50-56/s, 12-16 % of calls 429'd.
        Rounds paced after a leap up are not fitted (``_leapt``): a bucket that filled while the rate was under
        the limit hides a leap's excess for seconds, and a fit with them read a 50/s limit as 65-67/s. The
        rate goes to the lowest limit the rounds leave likely, if under the fitted one: when every round was
        over the limit, a higher floor and limit explain them as well as the true ones (a fit read 53.4/s and
        0.14 for 50/s and 0.1), and rounds under it tell them apart. After one such cut, another needs rounds
        sent over the likely limits since to favour the fit 10:1: an unlucky round (15 429s of 50 at 53.8/s)
        had the fit read a 50/s limit as 42.8/s, and cutting whenever the rate passed it, no round could show
        otherwise until that one was a minute old (0.83 of the limit from 40 to 90 s in that draw)."""
        if not self._floor_n or self._shared or self._leapt:
            return False
        rounds = [*self._recent, (now, self._round_rate, self._throttled, self._answered)]
        fit = fit_limit([(r, t, n) for _, r, t, n in rounds])
        if fit.gain < self.fit_gain:
            return False
        self.floor = fit.floor
        if self.rate >= fit.lower:
            self._known_limit = fit.limit
        if self.rate <= fit.upper:
            return False
        fresh = [(r, t, n) for end, r, t, n in rounds if end > self._fit_trimmed and r > fit.upper]
        odds = sum(_log_odds(t, n, 1.0 - (1.0 - fit.floor) * fit.limit / r, fit.floor) for r, t, n in fresh)
        if odds < math.log(self.decisive_odds):
            return False
        self._fit_trimmed = now
        log.debug("over the limit the last minute shows: %.1f/s (%.1f-%.1f), floor %.3f, gain %.1f",
                  fit.limit, fit.lower, fit.upper, fit.floor, fit.gain)
        self._cut_to(min(fit.limit * (1.0 - self.margin), fit.lower), fit.limit, now)
        return True

    def _above_fair(self) -> bool:
        fair = self.fair_share
        return (fair is not None and self.peers > 1 and self._known_limit is not None
                and self.rate > fair / self.fair_band)

    def acquire(self, *, retry: bool = False) -> float:
        """Take one token, sleeping as needed. Returns the seconds spent waiting.

        Callers reserve in the order they came (``retry``: ahead of those that have not sent yet). A
        worker starts a batch's calls while the one before is still under way (``fetch_details.py``);
        served in any order, the first batch's last calls came after most of the next one's, and the
        worker, busy handing the first on, had no call waiting: two processes on 50/s left 2.7-3.3 calls
        a second of what their rates allowed unsent (beats of 3,000-image runs). A retry's batch waits for
        it, so it goes first.

        A caller that finds no token reserves the next one (the bucket goes into debt) and sleeps once
        until it is due. Polling instead would wake every waiting thread at every token: with dozens of
        request threads that herd cost a whole core. Only ``reserve_ahead`` seconds are reserved; the
        first caller beyond that checks back when a slot may be free (the others wait their turn to
        reserve), so a new rate paces the sends right after it (reserving a whole second ahead kept a cut
        from showing for that second). The request belongs to the epoch it reserved in, so its answer is
        judged against the rate it was paced at.

        A caller that wakes later than a gateway's bucket covers (``burst_seconds``, or one slot at a low
        rate) books a new slot instead of sending: the process stalled (the GIL, a busy CPU), and every
        caller whose slot passed meanwhile would send at once. Traced in the benchmark (100/s, 0.1 s
        bucket): a 0.25 s stall woke some 60 callers together, the gateway refused 17, and the cut that
        followed went to 80/s and crept back for 7 s. A stall costs the slots it missed, which the
        gateway's bucket would not have held anyway.
        """
        waited = 0.0
        while True:
            wait, due, late, epoch, queued = self._reserve(ahead=retry)
            waited += queued
            if not wait:
                break
            self._sleep(wait)
            waited += wait
            if self._clock() - due <= late:
                break
            # Woken later than a gateway's bucket covers: the process stalled (the GIL, a busy CPU), and every
            # caller whose slot passed meanwhile would send at once. It books a new slot, ahead of the rest.
            retry = True
        self._local.epoch = epoch
        with self._lock:
            self._sent += 1  # every send of the round, whatever rate paced it: what the gateway saw
            sent_at = self._now()
            if self._sent == 1:
                self._first_send = sent_at
            self._last_send = sent_at
            self.sends += 1
            self._decide(sent_at)
        return waited

    def _reserve(self, *, ahead: bool) -> tuple[float, float, float, int, float]:
        """Wait for this caller's turn to reserve (``ahead``: right behind the caller reserving now), then
        reserve the next slot: (seconds until it is due, when, how late is too late, the epoch, seconds spent
        waiting to reserve). A caller stopped while it waits leaves the queue, or everyone behind it would wait."""
        turn = threading.Event()
        with self._lock:
            if ahead and self._queue:
                self._queue.insert(1, turn)  # behind the caller reserving now
            else:
                self._queue.append(turn)
            if self._queue[0] is turn:
                turn.set()
        queued = 0.0
        try:
            if not turn.is_set():
                began = self._clock()
                turn.wait()
                queued = self._clock() - began
            while True:
                with self._lock:
                    now = self._now()
                    self._refill(now)
                    epoch = self._epoch
                    if self._tokens >= 1.0 - 1e-9:
                        self._tokens -= 1.0
                        wait, reserved = 0.0, True
                    else:
                        self._held_back = self._wanted = True
                        # Reserve only a little ahead: a new rate must pace the sends right after it, or the
                        # round that judges it measures the sends reserved at the old rate instead.
                        reserved = -self._tokens < self.rate * self.reserve_ahead
                        if reserved:
                            wait = (1.0 - self._tokens) / self.rate
                            self._tokens -= 1.0
                        else:  # back when a reservation may be free
                            wait = (1.0 - self._tokens - self.rate * self.reserve_ahead) / self.rate
                    wait = self._clock_wait(wait)  # in turns, a token at hand too waits for this process's turn
                    due, late = self._clock() + wait, max(self.burst_seconds, 1.0 / self.send_rate)
                if reserved:
                    return wait, due, late, epoch, queued
                self._sleep(wait)
                queued += wait
        finally:
            with self._lock:
                self._queue.remove(turn)
                if self._queue:
                    self._queue[0].set()

    def _answer(self, throttled: bool) -> None:
        epoch = getattr(self._local, "epoch", None)
        with self._lock:
            if throttled:
                self.throttle_events += 1
            else:
                self.successes += 1
                self._accepted += 1
            if epoch == self._epoch:
                self._answered += 1
                self._throttled += throttled
            self._decide(self._now())

    def on_success(self) -> None:
        """The request this thread last acquired for was answered (not 429)."""
        self._answer(False)

    def on_throttled(self, retry_after: float | None = None) -> None:
        """The request this thread last acquired for got a 429. ``retry_after`` is the retrying
        caller's to honour (with jitter, see ``retry.py``); the bucket's pacing then spreads the
        returning requests, so a Retry-After does not freeze every thread and release them together."""
        self._answer(True)
