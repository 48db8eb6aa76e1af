"""The worker processes sending on one Roboflow key, told to each process's rate limiter.

Roboflow limits a key, not a process, and a Dataflow job runs as many processes as its autoscaler
decides (a local ``multi_processing`` run as many as it was given, and they finish at different
times: Beam splits the work once). Each process beats every ``interval`` seconds into
``od_import_rate_peers`` (migration 0008, through one PostgREST call) with the API calls per
second it sent, got answered and got refused (429), and learns how many processes sent on the key
and what the key answered and refused them all (:meth:`AdaptiveRateLimiter.peers_said` says what the
limiter does with that). The key is named by a salted digest, never the key; a process that sends
nothing is no peer. A process's first beat, at its start, says the rate it is about to send.

A process at a few calls a second that sent what its rate allowed over its last beat asks for a turn
(migration 0009), and learns its rank among the processes that did: the limiter then sends only in its
turn of each frame of the wall clock (:class:`AdaptiveRateLimiter`), so the processes' calls do not meet
at the gateway by chance. One that sends less (it has little work left, or something else holds it
back) asks for none: a turn it could not fill would be lost to the others (:meth:`RatePeers.asks_turn`).

A beat a second, not every two: after a key's limit fell, what each process learns of it is up to
two beats old (the others' rows are from their last beats), and the turns the processes take after
their cuts agree only once each has beaten again. Four processes on a limit dropped from 50 to 20/s
(``bench/throughput.py --matrix --images 5000``, three runs each): <= 5 % 429s again 3, 3 and 4 s after
the drop beating every second, 9, 10 and 8 s every two (15 and 18 s in other runs), with 3.9-4.0 % of
all calls 429s against 4.2-5.0 %. The cost, simulated (``tests/unit/test_rate_peers.py``, four draws):
sixteen processes starting together on 100/s held 0.93-0.94 of it from 20 s on, against 0.99-1.00, as
beats that still hold the 429s from before a cut cut them again; growing together at the key's clean
beats (``AdaptiveRateLimiter._grow_with_the_key``) they climb back within seconds and hold 0.98. Four
processes beat four times a second into one small table; a Dataflow job of a hundred processes, a
hundred times.

Without migration 0008 (or with a failing beat) every process goes on alone, as before: the job's
``--roboflow_rate_limit`` divided among as many processes as the job can start, and an unknown limit
found by each process from its 429s; without 0009, the processes share the key without turns. So a
beat is best effort: one attempt, skipped when it fails. Alone is not safe for a job of many processes:
in the simulation of ``tests/unit/test_ratelimit.py`` sixteen starting together at 20/s on a 100/s key
took each other's 429s for random ones, and 42 % of their calls were 429s; told by the beats, 3 %
(``tests/unit/test_rate_peers.py``, ``test_a_jobs_many_processes_starting_together_over_the_key_converge_to_it``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from transforms.clients.supabase import missing_function
from transforms.core.ratelimit import AdaptiveRateLimiter
from transforms.core.retry import PermanentError, TransientError

log = logging.getLogger(__name__)

BEAT_FUNCTION = "od_import_rate_beat"
MIGRATION = "pipeline/migrations/0008_rate_peers.sql"
TURNS_MIGRATION = "pipeline/migrations/0009_rate_turns.sql"
_SALT = b"roboflow-supabase-import/rate-peers/v1:"


def key_digest(api_key: str) -> str:
    """The name processes on one key share: a salted SHA-256 of it, so the table never holds the key."""
    return hashlib.sha256(_SALT + api_key.encode("utf-8")).hexdigest()[:32]


class RatePeers:
    """Beats for one process's limiter. ``beat(params)`` makes the call (``SupabaseClient.rpc``);
    ``live_beats`` beats without news make a peer count no more (a killed process). A process asks for a
    turn while its rate is at most ``turn_below`` and it sent ``keeps_up`` of what the rate allowed
    (:meth:`asks_turn`)."""

    def __init__(self, limiter: AdaptiveRateLimiter, beat: Callable[[dict[str, Any]], Any], key: str, *,
                 interval: float = 1.0, live_beats: float = 6.0, close_wait: float = 5.0, keeps_up: float = 0.8,
                 turn_below: float = 7.0, clock: Callable[[], float] = time.monotonic):
        self.limiter = limiter
        self._beat = beat
        self.key = key
        self.peer = uuid.uuid4().hex
        self.interval = interval
        self.live_beats = live_beats
        self.close_wait = close_wait
        self.keeps_up = keeps_up
        self.turn_below = turn_below
        self._clock = clock
        self._last = (clock(), limiter.sends, limiter.successes, limiter.throttle_events, limiter.unused)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = True
        self.turns = True  # the database takes turns (0009); False once it said it has only 0008's beat
        self.beats = 0

    def beat_once(self, *, leaving: bool = False) -> None:
        """One beat: this process's rates since the last, then the key's peers to the limiter."""
        if not self.enabled:
            return
        now, limiter = self._clock(), self.limiter
        sends, successes, refusals, unused = limiter.sends, limiter.successes, limiter.throttle_events, limiter.unused
        then, sends_then, successes_then, refusals_then, unused_then = self._last
        self._last = (now, sends, successes, refusals, unused)
        elapsed = max(now - then, 1e-3)
        # The first beat tells what the process is about to send: the others learn of it now, not a beat
        # after its first calls, which its slow start makes the most costly ones.
        sent = 0.0 if leaving else limiter.rate if not self.beats else (sends - sends_then) / elapsed
        accepted = 0.0 if leaving else (successes - successes_then) / elapsed
        refused = 0.0 if leaving else (refusals - refusals_then) / elapsed
        params = {"p_key": self.key, "p_peer": self.peer, "p_sent": sent, "p_accepted": accepted,
                  "p_refused": refused, "p_live_s": self.live_beats * self.interval}
        if self.turns:
            params["p_turn"] = sent > 0 and self.asks_turn(sends - sends_then, unused - unused_then)
        try:
            answer = self._beat(params)
        except (PermanentError, TransientError) as exc:
            if not missing_function(exc):
                log.debug("rate beat skipped: %s", exc)
            elif self.turns:
                self.turns = False
                log.info("processes on one Roboflow key share its rate without turns: the database has only "
                         "0008's %s(); apply %s", BEAT_FUNCTION, TURNS_MIGRATION)
                self._last = (then, sends_then, successes_then, refusals_then, unused_then)
                self.beat_once(leaving=leaving)
            else:
                self.enabled = False
                log.warning("processes on one Roboflow key do not share its rate: the database has no %s(); "
                            "apply %s", BEAT_FUNCTION, MIGRATION)
            return
        self.beats += 1
        if not leaving and isinstance(answer, dict):
            rank = answer.get("rank")
            self.limiter.peers_said(int(answer.get("peers") or 1), float(answer.get("accepted") or 0.0),
                                    float(answer.get("refused") or 0.0), self.interval,
                                    rank=None if rank is None else int(rank), turns=int(answer.get("turns") or 0))

    def asks_turn(self, sends: int, unused: float) -> bool:
        """Whether a turn is worth this process's while, from its ``sends`` since the last beat and the
        ``unused`` sends its rate allowed and nobody asked for.

        A turn pays where processes' calls meet at the gateway by chance: many processes on a key whose
        bucket holds few calls, each at a few calls a second (four on a limit dropped to 20/s: 0.71 of it
        with 9 % 429s without turns, 0.90 with 6.4 % in turns, bench). It costs what the process does not
        send in its turn, which no other process may then use: a worker sends a batch's 50 calls and then,
        at times, waits for the batch before it to be written. Two processes on 50/s, at 25/s each, left
        5-50 % of what their rates allowed unsent in some beats, and held 0.76 of the limit in turns against
        0.91 without (3,000 images). At most ``turn_below`` a second a batch takes seven seconds or more, and
        such waits are rare. At 10/s, four processes on 50/s, cut under 10/s each in their start, took turns
        and kept them (up to 15/s in turns): 0.84 and 0.88 of the limit steady, against 0.92 and 0.88 with
        7/s and the key's measure rising with what it let through (3,000 images, paired). Both tests are
        looser for a process in turns, so that one near a bound does not take turns and leave them beat
        after beat (each change moves every process's turn)."""
        in_turns = self.limiter.in_turns
        small = self.limiter.rate <= self.turn_below * (1.5 if in_turns else 1.0)
        allowed = sends + unused
        return small and allowed > 0 and unused <= (0.5 if in_turns else 1.0 - self.keeps_up) * allowed

    def _run(self) -> None:
        """Beat at once (a process joining a busy key learns its part before its slow start overshoots),
        then every ``interval``."""
        while True:
            try:
                self.beat_once()
            except Exception:  # noqa: BLE001 - a beat is best effort; the limiter goes on alone
                log.debug("rate beat failed", exc_info=True)
            if self._stop.wait(self.interval):
                return

    def start(self) -> RatePeers:
        self._thread = threading.Thread(target=self._run, name="rate_peers", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop beating and say so: this process's part of the key is free at once, not after the
        ``live_beats`` it would take the others to stop counting it. A beat still hanging after
        ``close_wait`` (the database does not answer) is left to its daemon thread, and so is the goodbye:
        a worker's teardown must not wait out a database outage's timeouts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.close_wait)
            if self._thread.is_alive():
                return
        try:
            self.beat_once(leaving=True)
        except Exception:  # noqa: BLE001 - the others stop counting this process after live_beats anyway
            log.debug("rate beat on leaving failed", exc_info=True)
