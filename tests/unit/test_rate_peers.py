"""Processes on one Roboflow key told of each other (transforms/clients/rate_peers.py): the real
``RatePeers`` and limiters in the rate-limit simulation, over an in-memory table that answers as
migration 0008's ``od_import_rate_beat`` does (tests/test_rate_peers_db.py runs the SQL itself)."""

import logging
import threading
import time

import pytest

from tests.unit.fake_time import FakeTime
from tests.unit.test_ratelimit import Client, Gateway, run, tally
from transforms.clients.rate_peers import RatePeers, key_digest
from transforms.core.ratelimit import AdaptiveRateLimiter
from transforms.core.retry import PermanentError, TransientError


class PeerTable:
    """od_import_rate_peers and od_import_rate_beat(), in memory, on the simulation's clocks; with
    ``turns``, as migration 0009 answers (turns taken, and the rank of a process that asked), else as 0008."""

    def __init__(self, turns: bool = True):
        self.turns = turns
        self.rows: dict[tuple[str, str], tuple[float, float, float, bool, float]] = {}
        self.calls: list[dict] = []

    def beat(self, now: float, params: dict) -> dict:
        self.calls.append(params)
        key, peer = params["p_key"], params["p_peer"]
        turn = bool(params.get("p_turn"))
        self.rows[key, peer] = (params["p_sent"], params["p_accepted"], params["p_refused"], turn, now)
        since = now - params["p_live_s"]
        live = [(p, *row) for (k, p), (*row, seen) in self.rows.items() if k == key and seen >= since]
        answer = {"peers": sum(1 for p, sent, *_ in live if sent > 0 or p == peer),
                  "accepted": sum(row[2] for row in live), "refused": sum(row[3] for row in live)}
        if not self.turns:
            return answer
        taking = sorted(p for p, sent, _, _, turn in live if turn and sent > 0)
        return {**answer, "turns": len(taking),
                "rank": taking.index(peer) if turn and params["p_sent"] > 0 else None}


def with_peers(clients: list[Client], table: PeerTable) -> list[RatePeers]:
    peers = [RatePeers(c.limiter, lambda params, c=c: table.beat(c.t.now, params), "k", clock=c.t.clock)
             for c in clients]
    for number, p in enumerate(peers):  # their turns in the order they were made, the same every run
        p.peer = f"peer-{number:02d}"
    return peers


def run_beating(clients: list[Client], peers: list[RatePeers], gateway: Gateway, seconds: float) -> None:
    """``run`` in slices of a beat: each process beats every ``interval`` of its own time."""
    end = min(c.t.now for c in clients) + seconds
    while min(c.t.now for c in clients) < end:
        run(clients, gateway, peers[0].interval)
        for p in peers:
            p.beat_once()


@pytest.mark.parametrize("seed", range(3))
def test_the_last_process_on_the_key_takes_it_within_a_few_seconds(seed):
    """Four processes on 50/s; three finish and say so. Alone, the last one took 10 s to regrow
    (test_ratelimit.py); told that it is alone, it takes the key's rate within 4 s."""
    clients = [Client(latency=0.05, start=1000.0 + 0.1 * i + 0.01 * seed) for i in range(4)]
    table = PeerTable()
    peers = with_peers(clients, table)
    gateway = Gateway(50, 0.1, seed=seed)
    run_beating(clients, peers, gateway, 40)
    for p in peers[1:]:
        p.close()
    run_beating(clients[:1], peers[:1], gateway, 20)
    accepted, wasted = tally(clients[:1], 1044, 1060)
    assert accepted >= 0.9 * 50, seed
    assert wasted <= 0.05


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_told_of_each_other_converge_to_the_keys_limit_together(processes):
    """test_ratelimit.py's shared key, on the path a job takes with migration 0008: the beats must not
    make one process take the others' 429s for random ones."""
    clients = [Client(latency=0.1, start=1000.0 + i * 0.013) for i in range(processes)]
    run_beating(clients, with_peers(clients, PeerTable()), Gateway(100), 90)
    accepted, wasted = tally(clients, 1030, 1090)
    assert accepted >= 0.9 * 100 and wasted <= 0.05
    assert all(c.limiter.rate >= 100 / processes / 4 for c in clients)  # nobody starved
    assert all(c.limiter.floor == 0.0 for c in clients)  # no process took the others' 429s for random ones


@pytest.mark.parametrize(("processes", "limit"), [(8, 50), (16, 100)])
def test_a_jobs_many_processes_starting_together_over_the_key_converge_to_it(processes, limit):
    """A Dataflow job's SDK processes all start their slow start at 20/s: eight on 50/s, sixteen on 100/s,
    3.2 times the key at once. Told of each other, they hold it from 20 s on and learn no floor: over four
    draws each, eight 0.99 of it with 2.4-2.7 % 429s, sixteen 0.98 with 1.6-1.9 %, and from 5 to 20 s
    0.96-0.97 and 0.90. Growing only in rounds of their own (at 6/s, 20 answers take 3 s), the sixteen held
    0.93-0.94 from 20 s on with 3.4-3.7 % and 0.78-0.79 from 5 to 20 s, eight 0.99 with 2.6-5.0 % and 0.92:
    a beat a second cut them deep at their start, on beats that still held the 429s from before the first
    cut; now they grow at each of the key's clean beats together (``_grow_with_the_key``). Untold (no
    migration 0008), the sixteen here took each other's 429s for random ones (seven floors of 0.20-0.55),
    one kept 137/s, and 42 % of the calls were 429s; eight started together at once did the same (37 %),
    eight 13 ms apart did not."""
    clients = [Client(latency=0.05, concurrency=25, start=1000.0 + i * 0.013) for i in range(processes)]
    run_beating(clients, with_peers(clients, PeerTable()), Gateway(limit, 0.1), 45)
    accepted, wasted = tally(clients, 1020, 1045)
    assert accepted >= 0.9 * limit and wasted <= 0.05
    assert tally(clients, 1005, 1020)[0] >= 0.85 * limit  # back from their start's cuts within seconds
    assert all(c.limiter.floor == 0.0 for c in clients)
    assert all(c.limiter.rate >= limit / processes / 4 for c in clients)  # nobody starved


@pytest.mark.parametrize("seed", range(3))
def test_processes_taking_turns_hold_a_key_whose_bucket_holds_two_calls(seed):
    """Four processes on 50/s dropping to 20/s, with a gateway bucket of 0.1 s of rate: two calls at 20/s.
    Each sending on its own, at its part, their calls met by chance and the bucket refused some though
    together they sent under the limit: over six draws, 10.2/s got through from 10 s after the drop, with
    6.3 % 429s (PeerTable(turns=False)). Taking turns, 19.0/s with 2.4 % (11.0/s and 7.1 %, 19.3/s and 2.1 %
    beating every two seconds)."""
    clients = [Client(latency=0.05, start=1000.0 + 0.1 * i + 0.01 * seed) for i in range(4)]
    gateway = Gateway(lambda now, calls: 50 if now < 1030 else 20, 0.1, seed=seed)
    run_beating(clients, with_peers(clients, PeerTable()), gateway, 90)
    accepted, wasted = tally(clients, 1040, 1090)
    assert accepted >= 0.9 * 20 and wasted <= 0.05


@pytest.mark.parametrize("seed", range(3))
def test_a_process_that_wants_less_than_its_part_leaves_the_rest_to_the_others(seed):
    """One process can send only ~5/s (one call in flight at 0.2 s). Over its fair part, the other one
    stops growing for a few rounds after a cut, then takes what the key has left: held there for good,
    it sent 30/s of the 45/s left."""
    small = Client(latency=0.2, concurrency=1, start=1000.0 + 0.01 * seed)
    big = Client(latency=0.05, start=1000.05)
    table = PeerTable()
    run_beating([small, big], with_peers([small, big], table), Gateway(50, 0.1, seed=seed), 60)
    accepted, wasted = tally([big], 1020, 1060)
    assert accepted >= 0.85 * 45, seed
    assert tally([small, big], 1020, 1060)[1] <= 0.05


def test_a_process_still_searching_on_a_full_key_starts_from_its_part():
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, clock=t.clock, sleep=t.sleep)  # slow start from 20/s
    limiter.peers_said(4, 40.0, 0.0)  # the others are starting too: the key answers all they ask
    assert limiter.rate == 20.0 and limiter.fair_share is None
    limiter.peers_said(4, 50.0, 10.0)  # three others, and the key refused some: it answers 50/s for all
    assert limiter.rate == pytest.approx(12.5 * 0.97)
    for _ in range(30):
        limiter.acquire()
        limiter.on_success()
    t.now += 2.0
    limiter.acquire()
    limiter.on_success()
    assert limiter.rate < 12.5  # creeping from its part, not x1.5 past it


def test_a_process_just_under_its_part_of_a_key_with_room_goes_to_it_in_one_round():
    """A bench trace of four processes on 50/s: one finished, and the three left sent 11.6-12.4/s each, 0.8
    of their new part (15/s). Creeping from there at 2 % a round of 2 s held the key at 0.7 for 8 s."""
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, initial_rate=24.8, clock=t.clock, sleep=t.sleep)
    for refused in [True] * 20 + [False] * 5:  # a round far over the limit: cut in half, to 12.4/s
        limiter.acquire()
        (limiter.on_throttled if refused else limiter.on_success)()
    t.now += 1.0
    limiter.acquire()
    limiter.on_success()
    assert limiter.rate == pytest.approx(12.4)
    limiter.peers_said(3, 45.0, 5.0)  # three processes; the key answers 45/s for all
    for _ in range(200):  # clean rounds, callers waiting for tokens, until the rate moves
        limiter.acquire()
        limiter.on_success()
        if limiter.rate != pytest.approx(12.4):
            break
    assert limiter.rate == pytest.approx(15.0 * 0.97)


def test_a_given_limit_is_divided_among_the_processes_that_send():
    t = FakeTime()
    limiter = AdaptiveRateLimiter(25.0, job_rate=100.0, clock=t.clock, sleep=t.sleep)  # 4 processes at most
    limiter.peers_said(2, 0.0, 0.0)
    limiter.peers_said(2, 0.0, 0.0)  # the first seconds: the job's other processes may not have beaten yet
    assert limiter.rate == pytest.approx(25.0)
    t.now += limiter.start_grace
    limiter.peers_said(4, 0.0, 0.0)
    assert limiter.rate == pytest.approx(25.0)
    limiter.peers_said(2, 0.0, 0.0)  # two left, or a beat missed them: the part grows when the next beat agrees
    assert limiter.rate == pytest.approx(25.0)
    limiter.peers_said(2, 0.0, 0.0)
    assert limiter.rate == limiter.max_rate == pytest.approx(50.0)
    limiter.peers_said(1, 0.0, 0.0)
    limiter.peers_said(1, 0.0, 0.0)
    assert limiter.rate == pytest.approx(100.0)
    limiter.peers_said(3, 0.0, 0.0)  # two joined: the part shrinks at once
    assert limiter.rate == limiter.max_rate == pytest.approx(100 / 3)


def test_a_beat_sends_the_rates_since_the_last_and_a_digest_of_the_key():
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, clock=t.clock, sleep=t.sleep)
    sent: list[dict] = []
    peers = RatePeers(limiter, lambda params: sent.append(params) or {"peers": 3, "accepted": 60.0, "refused": 10.0},
                      key_digest("rf_secret_key"), clock=t.clock)
    peers.beat_once()  # the first beat says what the process is about to send: its rate
    assert sent[0]["p_sent"] == limiter.rate == 20.0 and sent[0]["p_accepted"] == 0
    for i in range(40):
        limiter.acquire()
        if i % 4:
            limiter.on_success()  # the 10 others are not answered yet
    t.now += 2.0 - (t.now - 1000.0)  # 2 s since the first beat
    peers.beat_once()
    assert sent[1]["p_sent"] == pytest.approx(20.0) and sent[1]["p_accepted"] == pytest.approx(15.0)
    assert "rf_secret_key" not in repr(sent) and sent[1]["p_key"] == key_digest("rf_secret_key") != key_digest("x")
    assert limiter.peers == 3 and limiter.fair_share == pytest.approx(20.0)
    peers.close()
    assert sent[-1]["p_sent"] == 0 and sent[-1]["p_peer"] == sent[0]["p_peer"]


def no_beat_function(params: dict) -> dict:
    raise PermanentError("postgrest", "rpc od_import_rate_beat: PGRST202 Could not find the function")


def only_0008(params: dict) -> dict:  # the six-argument beat only: no turns
    return no_beat_function(params) if "p_turn" in params else {"peers": 2, "accepted": 40.0, "refused": 4.0}


def three_beats(database, caplog, level: int) -> tuple[RatePeers, list[dict]]:
    """A process's first three beats, 2 s apart, against ``database`` (a beat call's stand-in)."""
    t = FakeTime()
    calls: list[dict] = []
    peers = RatePeers(AdaptiveRateLimiter(None, clock=t.clock, sleep=t.sleep),
                      lambda params: calls.append(params) or database(params), "k", clock=t.clock)
    with caplog.at_level(level):
        for _ in range(3):
            t.now += 2.0
            peers.beat_once()
    return peers, calls


def test_without_migration_0008_the_process_goes_on_alone_and_says_so_once(caplog):
    peers, calls = three_beats(no_beat_function, caplog, logging.WARNING)
    assert len(calls) == 2 and not peers.enabled and peers.limiter.peers == 1  # 0009's beat, then 0008's
    assert "p_turn" in calls[0] and "p_turn" not in calls[1]
    assert [r.getMessage() for r in caplog.records].count(
        "processes on one Roboflow key do not share its rate: the database has no od_import_rate_beat(); "
        "apply pipeline/migrations/0008_rate_peers.sql") == 1


def test_without_migration_0009_the_processes_share_the_key_without_turns_and_say_so_once(caplog):
    peers, calls = three_beats(only_0008, caplog, logging.INFO)
    assert ["p_turn" in c for c in calls] == [True, False, False, False]
    limiter = peers.limiter
    assert peers.enabled and peers.beats == 3 and limiter.peers == 2 and limiter.send_rate == limiter.rate
    assert [r.getMessage() for r in caplog.records].count(
        "processes on one Roboflow key share its rate without turns: the database has only 0008's "
        "od_import_rate_beat(); apply pipeline/migrations/0009_rate_turns.sql") == 1


def test_a_process_asks_for_a_turn_only_while_its_rate_is_small_and_it_sends_what_the_rate_allows():
    """A turn the process could not fill would be lost to the others (test_a_process_that_wants_less...)."""
    t = FakeTime()
    limiter = AdaptiveRateLimiter(6.0, clock=t.clock, sleep=t.sleep, wall=t.clock)
    sent: list[dict] = []

    def beat(params: dict) -> dict:  # as 0009's: a rank only to a process that asked
        sent.append(params)
        return {"peers": 2, "accepted": 20.0, "refused": 0.0, "turns": 2, "rank": 1 if params["p_turn"] else None}

    peers = RatePeers(limiter, beat, "k", clock=t.clock)

    def busy(limiter: AdaptiveRateLimiter) -> None:  # 2 s of callers always waiting: the rate is all used
        end = t.now + 2.0
        while t.now < end:
            limiter.acquire()

    peers.beat_once()  # nothing sent yet
    assert not sent[-1]["p_turn"] and not limiter.in_turns
    busy(limiter)
    peers.beat_once()  # asks, and takes the second half of each second
    assert sent[-1]["p_turn"] and limiter.in_turns and limiter.send_rate == 12.0
    busy(limiter)
    peers.beat_once()
    assert sent[-1]["p_turn"]
    for _ in range(5):  # five calls in 2 s: the rate allowed 12
        t.now += 0.4
        limiter.acquire()
    peers.beat_once()
    assert not sent[-1]["p_turn"] and sent[-1]["p_sent"] > 0

    fast = AdaptiveRateLimiter(12.5, clock=t.clock, sleep=t.sleep, wall=t.clock)
    peers = RatePeers(fast, beat, "k", clock=t.clock)
    peers.beat_once()
    busy(fast)
    peers.beat_once()
    assert not sent[-1]["p_turn"]  # 12.5/s, a fourth of 50/s: a turn would cost the gaps between its batches


def test_closing_does_not_wait_out_a_beat_the_database_does_not_answer():
    limiter = AdaptiveRateLimiter(None)
    answer = threading.Event()
    calls = []

    def hanging(params):
        calls.append(params)
        answer.wait(10.0)
        return {"peers": 1, "accepted": 0.0, "refused": 0.0}

    peers = RatePeers(limiter, hanging, "k", close_wait=0.2).start()
    while not calls:
        time.sleep(0.01)
    started = time.monotonic()
    peers.close()
    assert time.monotonic() - started < 2.0 and len(calls) == 1  # no goodbye queued behind the hanging beat
    answer.set()


def test_a_failed_beat_is_skipped_and_the_next_one_counts():
    t = FakeTime()
    limiter = AdaptiveRateLimiter(10.0, job_rate=40.0, clock=t.clock, sleep=t.sleep)
    answers = [TransientError("connection", "reset"), {"peers": 2, "accepted": 20.0}, {"peers": 2, "accepted": 20.0}]

    def flaky(params):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    peers = RatePeers(limiter, flaky, "k", clock=t.clock)
    t.now += limiter.start_grace
    peers.beat_once()
    assert peers.enabled and limiter.rate == pytest.approx(10.0)
    peers.beat_once()
    peers.beat_once()
    assert limiter.rate == pytest.approx(20.0)


def answer_a_round(limiter: AdaptiveRateLimiter, t: FakeTime, answers: int, throttled: int) -> None:
    """``answers`` calls over about a second, the first ``throttled`` of them answered 429."""
    for i in range(answers):
        t.now += 1.0 / answers
        limiter.acquire()
        (limiter.on_throttled if i < throttled else limiter.on_success)()


@pytest.mark.parametrize(("key_refused", "floor_learned"), [(0.0, False), (10.0, True)])
def test_a_process_does_not_take_the_others_excess_for_random_429s_when_the_key_has_been_clean(
        key_refused, floor_learned):
    """A bench trace of four imports on 100/s, no noise: a process's two cuts barely changed what the key was
    sent, its share of 429s stayed at 10-20 %, and it learned that as random; all four did, and the key's 429s
    crept to 10-20 %. Random 429s would have shown in the beats' 200 calls too: a key that answered them all
    says these come with the rate, and the process slows down. Through a key as noisy as it, it learns them."""
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, initial_rate=25.0, clock=t.clock, sleep=t.sleep)
    for _ in range(2):  # two beats of a second: the key's 200 calls
        limiter.peers_said(4, 100.0 - key_refused, key_refused)
        t.now += 1.0
    before = limiter.rate
    for _ in range(6):  # a 429 in ten, whatever this process sends: the others' excess (or noise)
        answer_a_round(limiter, t, 40, 4)
    assert (limiter.floor > 0.05) == floor_learned
    if floor_learned:
        assert limiter.rate >= before  # noise: the rate before the experiment, restored
    else:
        assert limiter.floor == 0.0 and limiter.rate < 0.6 * before  # cut after cut


def test_the_keys_measure_rises_with_what_it_let_through_without_refusals():
    """Measured in four processes' uneven start, the key read 32/s of 50; fading alone, their parts stayed
    at 7-10/s while the key let 36-45/s through (bench trace). What got through is no more than the limit."""
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, clock=t.clock, sleep=t.sleep, wall=t.clock)
    limiter.peers_said(4, 10.0, 0.0)  # a slow start's calls: what was asked, not the limit
    assert limiter.fair_share is None
    limiter.peers_said(4, 32.0, 8.0)
    assert limiter.fair_share == pytest.approx(8.0)
    limiter.peers_said(4, 44.0, 0.0)
    assert limiter.fair_share == pytest.approx(11.0)
    limiter.peers_said(4, 30.0, 0.0, 2.0)  # the key has room: the measure fades, it does not fall to what was sent
    assert limiter.fair_share == pytest.approx(44.0 * limiter.key_memory**2 / 4)  # key_memory a second, two beaten


def test_a_process_that_wanted_more_grows_at_each_clean_beat_of_the_key_and_its_round_goes_on():
    """At a few calls a second a process's own round takes seconds; the key's clean beats are rounds of all of
    them. From the second clean beat in a row the step doubles each clean beat (to 16 %), a refusing beat
    resets it, and a process whose callers did not wait for a token since the last beat (it has what it
    wants) does not grow."""
    t = FakeTime()
    limiter = AdaptiveRateLimiter(None, initial_rate=20.0, clock=t.clock, sleep=t.sleep, wall=t.clock)
    limiter.peers_said(4, 40.0, 8.0)  # a full key: this process's part is 10/s, where its slow start ends
    rate, epoch = limiter.rate, limiter._epoch
    assert rate == pytest.approx(9.7)

    def beat(accepted: float, refused: float, *, wanted: bool = True) -> float:
        if wanted:
            limiter.acquire()
            limiter.acquire()  # no token left: this caller waits
        limiter.peers_said(4, accepted, refused)
        return limiter.rate

    steps = []
    for _ in range(6):  # the key lets 60/s through: 15/s is this process's part, which it does not pass
        before = limiter.rate
        steps.append(beat(60.0, 0.0) / before - 1.0)
    assert steps == pytest.approx([0.0, 0.02, 0.04, 0.08, 0.16, 0.16])
    assert limiter._epoch == epoch  # the round in progress goes on
    before = limiter.rate
    assert beat(60.0, 2.0) == before  # the key refused some: no growth, and the step starts over
    assert beat(60.0, 0.0) == before
    assert beat(60.0, 0.0) == pytest.approx(1.02 * before)
    assert beat(60.0, 0.0, wanted=False) == pytest.approx(1.02 * before)
